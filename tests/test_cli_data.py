"""Every command that reads samples reads them one way: any format, one split, the same image options and help."""

import csv
import json
import os

import pytest
from PIL import Image

import hf_tiny
from sgm_jax import cli
from sgm_jax.data.readers import read_sgm_sheet
from sgm_jax.responses.store import ResponseStore

READING = ["collect", "prober", "experts", "dictionary", "sae train", "evaluate", "compare", "sweep"]
READER_OPTIONS = ["--format", "--split", "--skip-missing", "--allow-outside-images"]
SITE = "model.language_model.layers.0.mlp.up_proj"


def _subparser(command):
    parser = cli.build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions if a.dest in ("command", "sae_command")).choices[word]
    return parser


def _argv(command, data, out):
    """`command` with what it requires (a model that does not exist: the data is read before it loads)."""
    model = ["--model", str(out / "no-model")]
    required = {
        "collect": [],
        "prober": ["--site", SITE],
        "experts": [],
        "dictionary": ["--site", SITE, "--concepts", str(out / "concepts.json")],
        "sae train": ["--site", SITE],
        "evaluate": [],
        "compare": [],
        "sweep": ["--scores", str(out / "scores.safetensors")],
    }[command]
    flag = "--stimuli" if command == "dictionary" else "--data"
    return [*command.split(), *model, flag, str(data), *required, "--out", str(out / "out")]


def _sheet(folder, rows):
    """An SGM release sheet (a CSV of name, prompt, output, label) with an image for each name but 'gone.png'."""
    os.makedirs(folder, exist_ok=True)
    for name in {row[0] for row in rows} - {"gone.png"}:
        Image.new("RGB", (24, 20), (40 * len(name) % 256, 90, 160)).save(os.path.join(folder, name))
    path = os.path.join(folder, "sheet.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["name", "prompt", "output", "label"], *rows])
    return path


@pytest.mark.parametrize("command", READING)
def test_every_reading_command_takes_the_reader_options(command, tmp_path):
    argv = _argv(command, "sheet.csv", tmp_path) + ["--format", "sgm-sheet", "--split", "test"]
    args = cli.build_parser().parse_args(argv + ["--skip-missing", "--allow-outside-images"])
    assert (args.format, args.split, args.skip_missing, args.allow_outside_images) == ("sgm-sheet", "test", True, True)


def test_the_reader_options_read_the_same_everywhere():
    helps = {
        command: {
            option: next(a for a in _subparser(command)._actions if option in a.option_strings).help
            for option in READER_OPTIONS
        }
        for command in READING
    }
    assert all(h == helps["collect"] for h in helps.values()), helps
    formats = next(a for a in _subparser("collect")._actions if "--format" in a.option_strings).choices
    assert formats == ["native", "mmsafetybench", "sgm-sheet", "jailbreakv", "mcq"]


@pytest.mark.parametrize("command", [c for c in READING if c != "sweep"])
def test_every_reading_command_reads_a_sheet_before_the_model_loads(command, tmp_path, capsys):
    """Its own reader's row error, named before the model (which does not exist) is looked for."""
    sheet = _sheet(tmp_path / "sheet", [["a.png", "what is this?", "", "yes"]])
    (tmp_path / "concepts.json").write_text(
        json.dumps({"concepts": [{"name": "c", "label": "undesirable", "positives": ["x"], "negatives": ["y"]}]})
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(_argv(command, sheet, tmp_path))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"sgm-jax {command.split()[0]}: error: {sheet}: row 2: label must be 0 or 1, got 'yes'", err


def test_collect_records_an_sgm_sheet(tmp_path):
    checkpoint = hf_tiny.save_tiny(tmp_path / "ckpt", seed=3, processor=True)
    rows = [
        ["a.png", "what is this?", "", "1"],
        ["bb.png", "describe it", "", "0"],
        ["gone.png", "and this?", "", "1"],
        ["ccc.png", "what colour?", "", "0"],
    ]
    sheet = _sheet(tmp_path / "sheet", rows)
    out = tmp_path / "store"
    argv = ["collect", "--model", checkpoint, "--data", sheet, "--format", "sgm-sheet", "--skip-missing"]
    cli.main(argv + ["--sites", SITE, "--out", str(out), "--quiet"])
    store = ResponseStore(str(out))
    assert store.complete
    assert store.sample_ids == [s.id for s in read_sgm_sheet(sheet, skip_missing_images=True)]
    assert store.sample_ids == ["a/row2", "bb/row3", "ccc/row5"]
