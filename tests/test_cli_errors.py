"""The command line's error boundary: a mistake is one line naming what and where, exit 1, no traceback; a bug
shows its traceback and asks to be reported; `--debug` shows every traceback; an interrupt exits 130."""

import pytest

from sgm_jax import cli


def _fails(capsys, argv, code=1):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == code
    return capsys.readouterr().err


def _one_line(err, command):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sgm-jax {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_a_missing_store_is_one_line_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    line = _one_line(_fails(capsys, ["score", "--store", missing, "--out", str(tmp_path / "s.safetensors")]), "score")
    assert missing in line


def test_a_wrong_intervention_file_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "iv.safetensors"
    bad.write_text("not a safetensors file")
    argv = ["generate", "--model", str(tmp_path), "--prompt", "hi", "--intervention", str(bad)]
    assert str(bad) in _one_line(_fails(capsys, argv), "generate")


def test_an_operating_system_error_names_the_path(tmp_path, capsys, monkeypatch):
    blocked = tmp_path / "out"

    def full_disk(args):
        raise OSError(28, "No space left on device", str(blocked / "chunk-0.npy"))

    monkeypatch.setattr(cli, "cmd_score", full_disk)
    line = _one_line(_fails(capsys, ["score", "--store", str(tmp_path), "--out", str(blocked)]), "score")
    assert line.endswith(f"No space left on device: {blocked / 'chunk-0.npy'}")


def test_a_bug_keeps_its_traceback_and_asks_to_be_reported(tmp_path, capsys, monkeypatch):
    def broken(args):
        return {}["missing"] + 1  # a KeyError raised outside sgm_jax's checks is a bug, not a user's mistake

    monkeypatch.setattr(cli, "cmd_score", broken)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")])
    assert "Traceback" in err and "please report it" in err


def test_debug_shows_the_traceback_of_a_mistake(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere")
    argv = ["score", "--store", missing, "--out", str(tmp_path / "s.safetensors")]
    with pytest.raises(Exception, match="nowhere"):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("SGM_JAX_DEBUG", "1")
    with pytest.raises(Exception, match="nowhere"):
        cli.main(argv)


def test_an_interrupt_exits_130_with_the_resume_hint(tmp_path, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_score", interrupted)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")], code=130)
    assert "rerun the same command to resume" in err


def test_a_zero_image_size_is_refused_not_ignored(tmp_path, capsys):
    import hf_tiny

    directory = hf_tiny.save_tiny(tmp_path / "ckpt", seed=1, processor=True)
    capsys.readouterr()  # transformers' save progress
    argv = ["generate", "--model", directory, "--prompt", "hi", "--image-size", "0"]
    assert "image size must be a positive number of pixels, got 0" in _one_line(_fails(capsys, argv), "generate")
