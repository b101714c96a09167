import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from jobs.gpt import data as data_mod
from jobs.gpt.batches import BatchSampler, fixed_batches
from jobs.gpt.data import (
    DataError,
    load_corpus,
    min_corpus_tokens,
    prepare_data,
)
from jobs.gpt.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    TokenizerError,
    tokenizer_from_dict,
)

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


def test_char_tokenizer_round_trip_and_serialisation():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert ids.max() < tok.vocab_size == len(set(TEXT))
    assert tok.decode(ids) == TEXT
    again = tokenizer_from_dict(tok.to_dict())
    assert again == tok and again.decode(again.encode("To be")) == "To be"


def test_char_tokenizer_names_field_for_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match=r"^prompt: character 'z'"):
        tok.encode("abz", field="prompt")


def test_byte_tokenizer_handles_any_text():
    tok = ByteTokenizer()
    text = "naïve 日本 🙂"
    ids = tok.encode(text)
    assert tok.vocab_size == 256 and ids.max() < 256
    assert tok.decode(ids) == text
    assert tokenizer_from_dict(tok.to_dict()) == tok
    # A cut multi-byte character is shown, not an exception.
    assert tok.decode(ids[:-1]).endswith("\ufffd")


def test_tokenizer_from_bad_dict():
    with pytest.raises(TokenizerError, match="^tokenizer:"):
        tokenizer_from_dict({"kind": "bpe"})
    with pytest.raises(TokenizerError, match="^tokenizer:"):
        tokenizer_from_dict({"kind": "char", "chars": "ba"})


def _one_line_data_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg.startswith("data:") and "\n" not in msg
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(DataError) as exc:
        load_corpus(str(tmp_path / "nope.txt"), tmp_path)
    assert "does not exist" in _one_line_data_error(exc)


def test_empty_file_and_empty_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError) as exc:
        load_corpus(str(tmp_path / "empty.txt"), tmp_path)
    assert "empty" in _one_line_data_error(exc)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.md").write_text("not a txt")
    with pytest.raises(DataError) as exc:
        load_corpus(str(folder), tmp_path)
    assert "no .txt files" in _one_line_data_error(exc)


def test_binary_and_non_utf8_files(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(DataError) as exc:
        load_corpus(str(tmp_path / "bin.txt"), tmp_path)
    assert "binary" in _one_line_data_error(exc)
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        load_corpus(str(tmp_path / "latin1.txt"), tmp_path)
    assert "UTF-8" in _one_line_data_error(exc)


def test_folder_of_txt_files_is_concatenated(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha ")
    (folder / "sub" / "b.txt").write_text("beta")
    (folder / "skip.bin").write_bytes(b"\x00")
    assert load_corpus(str(folder), tmp_path).text == "alpha beta"


def test_corpus_shorter_than_block(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 100)
    with pytest.raises(DataError) as exc:
        prepare_data(str(tmp_path / "short.txt"), "char", 64, tmp_path / "cache")
    msg = _one_line_data_error(exc)
    assert "block_size 64" in msg and str(min_corpus_tokens(64)) in msg
    # The minimum really is enough: both splits hold a block and its target.
    (tmp_path / "ok.txt").write_text("xy" * (min_corpus_tokens(64) // 2 + 1))
    ds = prepare_data(str(tmp_path / "ok.txt"), "char", 64, tmp_path / "cache")
    assert len(ds.val) >= 65 and len(ds.train) >= 65


def test_split_memmap_and_encode_once(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text(TEXT)
    cache = tmp_path / "cache"
    ds = prepare_data(str(tmp_path / "t.txt"), "char", 8, cache)
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    assert len(ds.train) + len(ds.val) == len(TEXT)
    assert len(ds.val) == len(TEXT) - int(len(TEXT) * 0.9)
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val])) == TEXT
    bins = list(cache.glob("tokens-*.bin"))
    assert len(bins) == 1

    def no_encoding(*_a, **_k):
        raise AssertionError("corpus encoded twice")

    monkeypatch.setattr(CharTokenizer, "encode", no_encoding)
    prepare_data(str(tmp_path / "t.txt"), "char", 8, cache)
    # A different tokenizer is a different cache entry.
    prepare_data(str(tmp_path / "t.txt"), "byte", 8, cache)
    assert len(list(cache.glob("tokens-*.bin"))) == 2


def test_batch_sampler_targets_are_shifted_inputs_and_state_restores():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(tokens, 16, 4, seed=3)
    x, y = sampler.next()
    assert x.shape == y.shape == (4, 16)
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()
    state = sampler.state_dict()
    a = sampler.next()
    sampler.load_state_dict(state)
    b = sampler.next()
    assert all((p == q).all() for p, q in zip(a, b))
    # Fixed evaluation batches are identical on every call.
    f1, f2 = fixed_batches(tokens, 16, 4, 3, seed=9), fixed_batches(tokens, 16, 4, 3, seed=9)
    assert all((p[0] == q[0]).all() for p, q in zip(f1, f2))


@pytest.fixture
def served_file(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "input.txt").write_text(TEXT)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *_a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.shutdown()


def test_download_verifies_checksum_and_caches(tmp_path, served_file):
    good = hashlib.sha256(TEXT.encode()).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as exc:
        load_corpus("shakespeare", cache, url=served_file, sha256="0" * 64)
    assert "SHA-256" in _one_line_data_error(exc)
    assert not (cache / data_mod.SHAKESPEARE_FILE).exists()
    corpus = load_corpus("shakespeare", cache, url=served_file, sha256=good)
    assert corpus.text == TEXT and corpus.note is None
    # Cached: a dead URL no longer matters.
    again = load_corpus(None, cache, url="http://127.0.0.1:9/none", sha256=good)
    assert again.text == TEXT


def test_no_network_falls_back_to_pydoc_text_and_says_so(tmp_path):
    corpus = load_corpus(None, tmp_path, url="http://127.0.0.1:9/input.txt", timeout_s=2)
    assert corpus.name == "pydoc_data.topics"
    assert len(corpus.text) > 100_000
    assert corpus.note and "pydoc_data.topics" in corpus.note and "\n" not in corpus.note


def test_real_corpus_checksum_matches_constant():
    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"Tiny Shakespeare not found at {path}")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data_mod.SHAKESPEARE_SHA256
