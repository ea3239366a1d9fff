"""`tether push`: huggingface_hub's upload called as documented, and one line when the Hub
cannot be reached (no test here touches a network)."""

import pytest

from tether.cli import main


@pytest.fixture
def final(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    (tmp_path / "final" / "README.md").write_text("---\nlibrary_name: transformers\n---\n")
    return tmp_path / "final"


def test_push_creates_the_repo_and_uploads_the_folder(final, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class Commit:
        commit_url = "https://huggingface.co/me/model/commit/abc"

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs))
            return Commit()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert main(["push", str(final), "repo=me/model", "message=first"]) == 0
    assert calls == [("create", "me/model", {"private": True, "exist_ok": True,
                                             "repo_type": "model"}),
                     ("upload", {"repo_id": "me/model", "folder_path": final,
                                 "commit_message": "first", "repo_type": "model"})]
    assert "pushed" in capsys.readouterr().out


@pytest.mark.parametrize("env,expected", [
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach the Hub to push to me/model"),
    ({"HF_TOKEN": ""}, "no Hugging Face token")])
def test_no_way_to_the_hub_is_one_line_and_exit_2(final, tmp_path, monkeypatch, capsys, env,
                                                   expected):
    import subprocess
    import sys

    base = {"HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "tether", "push", str(final), "repo=me/model"],
                          env=base | env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_directory_that_is_not_a_model_is_refused_first(tmp_path, capsys):
    assert main(["push", str(tmp_path), "repo=me/model"]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert main(["push", str(tmp_path)]) == 2
    assert "repo=user/name" in capsys.readouterr().err
