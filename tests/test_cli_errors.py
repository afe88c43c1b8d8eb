"""The command line's error boundary: a mistake is one line naming what and where, exit 1, no traceback; a bug
shows its traceback and asks to be reported; `--debug` shows every traceback; an interrupt exits 130."""

import dataclasses
import functools
import sys

import pytest

from sgm_jax import cli
from sgm_jax.cli import pipeline


def _score_runs(monkeypatch, work) -> None:
    """`sgm-jax score` doing `work(args)` instead of its own."""
    replaced = [
        dataclasses.replace(c, run=functools.wraps(c.run)(work)) if c.name == "score" else c for c in pipeline.COMMANDS
    ]
    monkeypatch.setattr(pipeline, "COMMANDS", tuple(replaced))


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

    _score_runs(monkeypatch, full_disk)
    line = _one_line(_fails(capsys, ["score", "--store", str(tmp_path), "--out", str(blocked)]), "score")
    assert line.endswith(f"No space left on device: {blocked / 'chunk-0.npy'}")


def test_a_bug_keeps_its_traceback_and_asks_to_be_reported(tmp_path, capsys, monkeypatch):
    def broken(args):
        return {}["missing"] + 1  # a KeyError raised outside sgm_jax's checks is a bug, not a user's mistake

    _score_runs(monkeypatch, broken)
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

    _score_runs(monkeypatch, interrupted)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")], code=130)
    assert "rerun the same command to resume" in err


def test_an_interrupt_turned_into_another_error_still_exits_130(tmp_path, capsys, monkeypatch):
    """A SIGINT whose KeyboardInterrupt is caught and re-raised as another error (as jax's dispatch can do)."""
    import os
    import signal

    def interrupted_inside_a_library(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise ValueError("computation was cancelled") from None

    _score_runs(monkeypatch, interrupted_inside_a_library)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")], code=130)
    assert err.strip() == "sgm-jax score: interrupted; rerun the same command to resume"


def test_an_interrupt_swallowed_by_the_work_still_exits_130(tmp_path, capsys, monkeypatch):
    """A SIGINT whose KeyboardInterrupt a library catches (a thread pool, a progress bar), the work then returning
    as if it had finished: the command still ends with 130 and the resume hint, not 0."""
    import os
    import signal

    def interrupt_swallowed(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass

    _score_runs(monkeypatch, interrupt_swallowed)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")], code=130)
    assert err.strip() == "sgm-jax score: interrupted; rerun the same command to resume"


def test_an_interrupt_landing_in_a_finalizer_prints_no_traceback(tmp_path, capsys, monkeypatch):
    """A SIGINT that arrives while a finalizer runs (jax's garbage-collection callback is one): Python cannot raise it
    there and would print its traceback; the command ends with 130 and the resume hint alone."""
    import signal

    class Finalized:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    def interrupted_in_a_finalizer(args):
        Finalized()  # collected at once, its finalizer interrupted

    printed = []  # what Python's hook would print: "Exception ignored in ..." and a traceback
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    _score_runs(monkeypatch, interrupted_in_a_finalizer)
    err = _fails(capsys, ["score", "--store", str(tmp_path), "--out", str(tmp_path / "s")], code=130)
    assert err.strip() == "sgm-jax score: interrupted; rerun the same command to resume"
    assert printed == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--image-size", "0"], "argument --image-size: must be 1 or more, got 0"),
        (["collect", "--batch-size", "0"], "argument --batch-size: must be 1 or more, got 0"),
        (["evaluate", "--max-new-tokens", "-3"], "argument --max-new-tokens: must be 1 or more, got -3"),
        (["generate", "--top-p", "0"], "argument --top-p: must be a finite number in (0, 1], got 0"),
        (["generate", "--temperature", "nan"], "argument --temperature: must be a finite number in [0, inf], got nan"),
        (["intervention", "--threshold", "1.5"], "argument --threshold: must be a finite number in [0, 1], got 1.5"),
        (["evaluate", "--batch-size", "two"], "argument --batch-size: expected a whole number, got 'two'"),
    ],
)
def test_an_option_out_of_range_is_refused_when_parsed(tmp_path, capsys, argv, message):
    """Refused before anything is loaded (the model path does not even exist), exit 2, one line naming it."""
    command, *options = argv
    required = {
        "generate": ["--model", str(tmp_path / "none"), "--prompt", "hi"],
        "collect": ["--model", str(tmp_path / "none"), "--data", "d.jsonl", "--out", str(tmp_path / "s")],
        "evaluate": ["--model", str(tmp_path / "none"), "--data", "d.jsonl", "--out", str(tmp_path / "e")],
        "intervention": ["--scores", "s.safetensors", "--out", str(tmp_path / "iv.safetensors")],
    }[command]
    err = _fails(capsys, [command, *required, *options], code=2)
    assert err.strip() == f"sgm-jax {command}: error: {message} (see sgm-jax {command} --help)"
    assert not any(tmp_path.iterdir())


def test_the_api_refuses_a_zero_image_size_too():
    from sgm_jax.data.encode import SquareImages

    with pytest.raises(ValueError, match="image size must be a positive number of pixels, got 0"):
        SquareImages(object(), 0)
