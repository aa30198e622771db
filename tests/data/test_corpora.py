"""Text files and the data dir: clear errors for missing, empty and non-UTF-8 files."""
import pytest

from trax_sparse.data import (DATA_DIR_ENV, default_data_dir, read_text_file, split_paragraphs,
                              text_file_examples)


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


def test_data_dir_env_var_overrides_repo_default(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert default_data_dir().name == '.data'
    assert (default_data_dir().parent / 'trax_sparse').is_dir()
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
