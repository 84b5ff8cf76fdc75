"""opzo-report --quick: every section of the report is written, with the plot."""
from opzo_ext import report


def test_quick_report_has_every_section(tmp_path):
    out = tmp_path / "report.md"
    assert report.main(["--quick", "--quiet", "--out", str(out)]) == 0
    text = out.read_text()
    for title in ("Table 1", "Table 7", "Figure 2", "Figure 4", "Figure 4 on a conv net", "Table 2", "Table 8",
                  "Table 11"):
        assert f"## {title}" in text, title
    for method in ("bp", "opzo", "dfa", "dkp", "zo"):
        assert f"| {method} | " in text
    assert "| rademacher, before |" in text and "| 0.99999 |" in text
    # the paper's figures beside ours, with the data set they come from
    assert "| setting | accuracy (%) | paper, conv5 on CIFAR-100 (%) |" in text and " | 60.93 |" in text
    assert " | 84.03 |" in text and "| paper, MNIST, 50 epochs (%) |" in text and "| 0.1734 |" in text
    assert (tmp_path / "report_alignment.png").stat().st_size > 1000
    assert (tmp_path / "report_alignment_conv.png").stat().st_size > 1000
    assert "| batch | opzo conv1 | opzo conv2 | dfa conv1 | dfa conv2 |" in text  # the conv net's curve
    assert "| batch | opzo fc1 | opzo fc2 | dfa fc1 | dfa fc2 |" in text
