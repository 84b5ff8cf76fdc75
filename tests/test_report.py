"""opzo-report --quick: every section of the report is written, with the plot; the destination is a
run folder, checked before any experiment and never written over without --overwrite."""
from pathlib import Path

import pytest

from opzo_ext import report

DATA = str(Path(__file__).resolve().parents[1] / "data")


def test_quick_report_has_every_section(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default destination is a run folder under the current directory
    assert report.main(["--quick", "--quiet", "--data-root", DATA]) == 0
    out = tmp_path / "runs" / "report-mnist-quick" / "report.md"
    assert "opzo-report: writing runs/report-mnist-quick/report.md" in capsys.readouterr().out
    assert not (tmp_path / "docs").exists()  # never docs/results, where the committed reports are
    text = out.read_text()
    # marked as what it is
    assert text.startswith("# opzo_ext analysis report (small scale): QUICK SMOKE TEST, not results")
    assert "**Quick smoke test**" in text and "They are not results" in text
    for title in ("Table 1", "Table 7", "Figure 2", "Figure 4", "Figure 4 on a conv net", "Table 2", "Table 8",
                  "Table 11"):
        assert f"## {title}" in text, title
    for method in ("bp", "opzo", "dfa", "dkp", "zo"):
        assert f"| {method} | " in text
    assert "| rademacher, before |" in text and "| 0.99999 |" in text
    # the paper's figures beside ours, with the data set they come from
    assert "| setting | accuracy (%) | paper, conv5 on CIFAR-100 (%) |" in text and " | 60.93 |" in text
    assert " | 84.03 |" in text and "| paper, MNIST, 50 epochs (%) |" in text and "| 0.1734 |" in text
    assert (out.parent / "report_alignment.png").stat().st_size > 1000
    assert (out.parent / "report_alignment_conv.png").stat().st_size > 1000
    assert "| batch | opzo conv1 | opzo conv2 | dfa conv1 | dfa conv2 |" in text  # the conv net's curve
    assert "| batch | opzo fc1 | opzo fc2 | dfa fc1 | dfa fc2 |" in text
    assert not list(out.parent.glob(".*tmp*"))


def no_experiments(*args, **kwargs):
    pytest.fail("an experiment ran before the destination was checked")


def test_an_existing_report_is_refused_before_any_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "experiment", no_experiments)
    out = tmp_path / "report.md"
    for existing in (out, tmp_path / "report_alignment_conv.png"):  # the report or one of its figures
        existing.write_text("the committed report")
        assert report.main(["--quick", "--quiet", "--data-root", DATA, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("opzo-report: error: ") and str(existing) in err and "--overwrite" in err
        assert existing.read_text() == "the committed report"
        existing.unlink()


def test_an_unwritable_destination_is_refused_before_any_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "experiment", no_experiments)
    (tmp_path / "file").write_text("")
    assert report.main(["--quick", "--quiet", "--data-root", DATA, "--out", str(tmp_path / "file" / "r.md")]) == 2
    assert "cannot create its folder" in capsys.readouterr().err
    (tmp_path / "folder.md").mkdir()
    assert report.main(["--quick", "--quiet", "--data-root", DATA, "--out", str(tmp_path / "folder.md")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_missing_data_names_the_download_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "experiment", no_experiments)

    def missing(name, root, train=True, download=None, **kwargs):
        raise RuntimeError(f"{name} is not in {root} and download=False. Pass download=True to let it download")

    monkeypatch.setattr(report, "get_dataset", missing)
    assert report.main(["--quick", "--quiet", "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert "opzo-report: error: the mnist data is not available" in err and "--download" in err
    assert "download=True" not in err


def test_the_alignment_figure_has_a_title_an_outside_legend_and_epoch_marks():
    curve = [(b, {"fc1.weight": 0.5, "fc2.weight": 0.6, "fc3.weight": 1.0}) for b in range(0, 12, 2)]
    methods = {"opzo": {"alignment": curve, "batches_per_epoch": 5}, "bp": {"alignment": []}}
    fig = report.alignment_figure(methods, "FC 784-800-800-10 on MNIST, 3 epoch(s)")
    ax = fig.axes[0]
    assert ax.get_title() == "FC 784-800-800-10 on MNIST, 3 epoch(s)"
    legend = ax.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # outside the data, on the right
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":" and len(line.get_xdata()) == 2
            and line.get_xdata()[0] == line.get_xdata()[1]] == [5, 10]  # a mark at each new epoch
    top = [a for a in fig.axes[0].child_axes]
    assert top and [t.get_text() for t in top[0].get_xticklabels()] == ["epoch 1", "epoch 2", "epoch 3"]
