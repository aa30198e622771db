"""Text files and the data dir: clear errors for missing, empty and non-UTF-8 files; the data
dir is per-user, overridable by $TRAX_SPARSE_DATA_DIR and --data_dir."""
import pytest

from trax_sparse.data import (DATA_DIR_ENV, default_data_dir, read_text_file, set_data_dir,
                              split_paragraphs, text_file_examples)


def test_read_text_file_and_examples(tmp_path):
    path = tmp_path / 'play.txt'
    path.write_text('Ber.\nWho is there?\n\n \nFran.\r\nNay, answer me.\n\n\nEnd.\n',
                    encoding='utf-8')
    assert read_text_file(path).startswith('Ber.')
    assert text_file_examples(path) == ['Ber.\nWho is there?', 'Fran.\nNay, answer me.', 'End.']
    assert text_file_examples(path, unit='line') == ['Ber.', 'Who is there?', 'Fran.',
                                                     'Nay, answer me.', 'End.']
    assert split_paragraphs('\n\n') == []
    with pytest.raises(ValueError, match="unit must be 'paragraph' or 'line', got 'word'"):
        text_file_examples(path, unit='word')


def test_missing_empty_and_non_utf8_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing\.txt' does not exist"):
        read_text_file(tmp_path / 'missing.txt')
    empty = tmp_path / 'empty.txt'
    empty.write_bytes(b' \n\n\t\n')
    with pytest.raises(ValueError, match=r"text file '.*empty\.txt' is empty; expected some"):
        text_file_examples(empty)
    latin1 = tmp_path / 'latin1.txt'
    latin1.write_bytes('caf\u00e9 au lait'.encode('latin-1'))
    with pytest.raises(ValueError, match=r"text file '.*latin1\.txt' is not valid UTF-8 text: "
                                         r'byte 0xe9 at offset 3'):
        read_text_file(latin1)


def test_data_dir_is_per_user_overridable_by_env_var_and_set_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv('XDG_DATA_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert default_data_dir() == tmp_path / 'home' / '.local' / 'share' / 'trax_sparse'
    assert 'site-packages' not in str(default_data_dir())
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'xdg'))
    assert default_data_dir() == tmp_path / 'xdg' / 'trax_sparse'
    monkeypatch.setenv('XDG_DATA_HOME', 'relative/ignored')        # the XDG spec: absolute only
    assert default_data_dir() == tmp_path / 'home' / '.local' / 'share' / 'trax_sparse'
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / 'env'))
    assert default_data_dir() == tmp_path / 'env'
    try:
        set_data_dir(tmp_path / 'flag')                            # the trainer's --data_dir
        assert default_data_dir() == tmp_path / 'flag'
    finally:
        set_data_dir(None)
    assert default_data_dir() == tmp_path / 'env'


def test_prepare_creates_a_missing_data_dir_or_says_why_not(tmp_path, capsys):
    from trax_sparse.data import prepare
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    assert prepare.main([f'--data_dir={blocker}/sub']) == 1
    err = capsys.readouterr().err
    assert f"cannot create the data dir '{blocker}/sub'" in err and '--data_dir' in err
