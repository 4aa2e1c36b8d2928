"""The quality benchmark's side-by-side table of the learned rows and its goal counts."""

from benchmarks import quality


def _setting(**means):
    """A summary entry with two seeds per row, centred on each mean; every run costs its mean's tenth."""
    best = {k: [v - 1.0, v + 1.0] for k, v in means.items()}
    seconds = {k: v / 10 for k, v in means.items()}
    seconds["sweep"] = 10.0
    return {"best": best, "seconds": seconds}


def test_peers_overview_marks_the_best_row_and_counts_the_goals():
    summary = {
        "digits_clean": _setting(
            **{
                "fixed:cross_entropy": 97.0,
                "sweep": 98.0,
                "slf": 96.0,
                "l2rw": 96.5,
                "meta_weight_net": 96.0,
                "joint": 96.0,
            }
        ),  # fmt: skip
        "digits_pair40": _setting(
            **{
                "fixed:cross_entropy": 66.0,
                "sweep": 79.0,
                "slf": 80.0,
                "l2rw": 90.0,
                "meta_weight_net": 75.0,
                "joint": 95.0,
            }
        ),  # fmt: skip
        "digits_sym40": _setting(
            **{
                "fixed:cross_entropy": 90.0,
                "sweep": 92.0,
                "slf": 94.0,
                "l2rw": 93.0,
                "meta_weight_net": 92.0,
                "joint": 93.5,
            }
        ),  # fmt: skip
        "diabetes_out10": _setting(**{"fixed:mse": 0.6, "sweep": 0.6, "slf": 0.59}),
    }
    text = quality.peers_overview(summary)
    lines = text.splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:5]}
    assert set(rows) == {"digits_clean", "digits_pair40", "digits_sym40"}  # no regression row
    assert rows["digits_clean"][:2] == ["97.00", "**98.00**"]
    assert rows["digits_pair40"][5] == "**95.00**" and rows["digits_sym40"][2] == "**94.00**"
    assert rows["digits_pair40"][6] == "0.80 / 0.90 / 0.75 / 0.95"  # cost: the row's seconds over the sweep's
    # Noisy settings only: SLF ahead of both peers on sym40, not pair40; joint best on pair40, not sym40.
    assert "SLF >= l2rw and >= meta_weight_net on 1 of 2 noisy settings (goal: most): MISSED" in text
    assert "joint >= every other row on 1 of 2 noisy settings (goal: half): met" in text


def test_peers_overview_is_empty_without_example_weighting_rows():
    assert quality.peers_overview({"digits_clean": _setting(**{"fixed:cross_entropy": 97.0, "sweep": 98.0})}) == ""
