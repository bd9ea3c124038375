import hashlib

import numpy as np
import pytest
import torch

from nanonlp.data import catalog
from nanonlp.data.readers import read_text
from nanonlp.errors import NanoNLPError
from nanonlp.tasks.lm import WindowSampler, read_ids, write_ids


def test_undecodable_bytes_name_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(NanoNLPError, match=r"bad.txt' is not valid utf-8: undecodable byte\(s\) ff at byte offset 6"):
        read_text(path)
    assert read_text(path, "latin-1") == "hello \xff world"


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(NanoNLPError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    with pytest.raises(NanoNLPError, match="does not exist"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(NanoNLPError, match="is a folder; point data.path at a text file"):
        read_text(tmp_path)
    with pytest.raises(NanoNLPError, match="does not exist; check --src"):  # the option the user gave is named
        read_text(tmp_path / "missing.txt", key="--src")


def test_a_pipe_reads_like_a_file(tmp_path):
    # `nanonlp eval RUN --src <(zcat test.en.gz)` hands a named pipe, not a regular file
    import os
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("一句话\nsecond line\n", encoding="utf-8"))
    writer.start()
    assert read_text(fifo) == "一句话\nsecond line\n"
    writer.join()


def test_byte_order_mark_is_dropped(tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeffhi".encode("utf-8"))
    assert read_text(tmp_path / "bom.txt") == "hi"


def _fake_entry(monkeypatch, source, sha256):
    entry = catalog.Entry("toy", "toy/input.txt", "a toy", url=source.as_uri(), sha256=sha256)
    monkeypatch.setitem(catalog.CATALOG, "toy", entry)


def test_catalog_prefers_nanonlp_data(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "toy").mkdir(parents=True)
    (shared / "toy" / "input.txt").write_text("shared copy")
    _fake_entry(monkeypatch, tmp_path / "nowhere.txt", None)
    monkeypatch.setenv("NANONLP_DATA", str(shared))
    assert catalog.resolve("toy") == shared / "toy" / "input.txt"


def test_catalog_downloads_once_with_checksum(tmp_path, monkeypatch):
    source = tmp_path / "upstream.txt"
    source.write_bytes(b"to be or not to be\n")
    _fake_entry(monkeypatch, source, hashlib.sha256(source.read_bytes()).hexdigest())
    path = catalog.resolve("toy")
    assert path == catalog.cache_dir() / "toy" / "input.txt"
    assert path.read_bytes() == source.read_bytes()
    source.unlink()  # the second time it comes from the cache
    assert catalog.resolve("toy") == path


def test_catalog_checksum_mismatch_saves_nothing(tmp_path, monkeypatch):
    source = tmp_path / "upstream.txt"
    source.write_bytes(b"tampered\n")
    _fake_entry(monkeypatch, source, "0" * 64)
    with pytest.raises(NanoNLPError, match="checksum"):
        catalog.resolve("toy")
    assert not (catalog.cache_dir() / "toy" / "input.txt").exists()
    assert list((catalog.cache_dir()).rglob("*.tmp")) == []


def test_catalog_without_network_says_how_to_point_at_a_file(tmp_path, monkeypatch):
    _fake_entry(monkeypatch, tmp_path / "unreachable.txt", None)
    with pytest.raises(NanoNLPError, match=r"could not download 'toy'.*NANONLP_DATA/toy/input.txt.*data.path"):
        catalog.resolve("toy")


def test_tiny_shakespeare_entry_points_at_char_rnn():
    entry = catalog.CATALOG["tiny_shakespeare"]
    assert entry.url.endswith("tinyshakespeare/input.txt") and len(entry.sha256) == 64


def test_chatterbot_text_is_built_from_the_installed_package():
    pytest.importorskip("chatterbot_corpus")
    path = catalog.resolve("chatterbot_english")
    text = path.read_text(encoding="utf-8")
    assert len(text) > 50_000
    assert text.startswith("User: ") and "\nBot: " in text


def test_chatterbot_conversations_are_kept_once_in_a_seeded_shuffle(tmp_path, monkeypatch):
    import sys
    import types

    folder = tmp_path / "data" / "english"
    folder.mkdir(parents=True)
    (folder / "a.yml").write_text("conversations:\n- - Hi\n  - Hello\n- - How are you?\n  - Fine.\n", encoding="utf-8")
    (folder / "b.yml").write_text("conversations:\n- - Hi\n  - Hello\n" + "".join(f"- - Q{i}\n  - A{i}\n" for i in range(20)),
                                  encoding="utf-8")
    monkeypatch.setitem(sys.modules, "chatterbot_corpus", types.SimpleNamespace(__file__=str(tmp_path / "__init__.py")))
    text = catalog._chatterbot("english")()
    blocks = text.strip().split("\n\n")
    file_order = ["User: Hi\nBot: Hello", "User: How are you?\nBot: Fine.", *(f"User: Q{i}\nBot: A{i}" for i in range(20))]
    assert sorted(blocks) == sorted(file_order)  # the repeated conversation once
    assert blocks != file_order  # shuffled, so a tail split is not the last file
    assert catalog._chatterbot("english")() == text  # the same shuffle every build


def test_unknown_name_lists_the_catalog():
    with pytest.raises(NanoNLPError, match="known names are: tiny_shakespeare"):
        catalog.resolve("no_such_set")


def test_ids_round_trip_through_memmap(tmp_path):
    write_ids(tmp_path / "a.bin", [0, 5, 65535], vocab_size=65536)
    assert read_ids(tmp_path / "a.bin", 65536).tolist() == [0, 5, 65535]
    write_ids(tmp_path / "b.bin", [70000, 1], vocab_size=70001)
    assert read_ids(tmp_path / "b.bin", 70001).tolist() == [70000, 1]


def test_window_sampler_targets_are_inputs_shifted():
    ids = np.arange(100, dtype=np.uint16)
    sampler = WindowSampler(ids, block_size=8, batch_size=16, device=torch.device("cpu"), seed=0, split="training")
    x, y = sampler()
    assert x.shape == y.shape == (16, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # ids are consecutive here
    assert int(y.max()) <= 99


def test_window_sampler_too_short_split():
    with pytest.raises(NanoNLPError, match="fewer than model.block_size"):
        WindowSampler(np.arange(5, dtype=np.uint16), 8, 4, torch.device("cpu"), 0, "validation")
