"""Gin registration: every public layer, optimizers, schedules, the train root; no `mode`."""
import gin
import pytest

from trax_sparse import configurables
from trax_sparse import layers as tl
from trax_sparse import training


@pytest.fixture(autouse=True)
def clean_gin():
    yield
    gin.clear_config()


def test_every_public_layer_is_registered():
    public = {n for n in tl.__all__ if n not in configurables.LAYER_API}
    assert public == set(configurables.LAYERS)
    for name in public:
        assert gin.get_configurable(f'trax_sparse.layers.{name}') is not None


def test_bindings_build_layers_optimizers_and_schedules():
    with gin.unlock_config():
        gin.parse_config_files_and_bindings([], [
            'Dense.n_units = 7', 'Adafactor.decay_rate = 0.9',
            'multifactor.constant = 0.5', "multifactor.factors = 'constant'"])
    assert gin.get_configurable('Dense')().name == 'Dense_7'
    assert gin.get_configurable('Adafactor')().hyper_parameters['decay_rate'] == 0.9
    assert float(gin.get_configurable('multifactor')()(10)) == 0.5
    assert isinstance(gin.get_configurable('Adam')(), training.Optimizer)


def test_mode_is_not_configurable():
    with pytest.raises(ValueError, match="Configurable 'Dropout' has denylisted kwarg 'mode'"):
        gin.parse_config("Dropout.mode = 'eval'")
    with pytest.raises(ValueError, match="denylisted kwarg 'output_dir'"):
        gin.parse_config("train.output_dir = '/tmp/x'")
