"""benchmarks/tolerance.py and levers.py: the tolerance rule, the refusal of a checkout that is not one, and the
levers' variants (what each one changes); the runs themselves take minutes and are not repeated here."""
import levers
import speed_frontier
import tolerance


def test_within_the_old_range_or_above():
    old = [{"asr_exact": 0.5, "pattern_cos": 0.83}, {"asr_exact": 0.56, "pattern_cos": 0.86}]
    assert tolerance.within({"asr_exact": 0.5, "pattern_cos": 0.9}, old) == {"asr_exact": True, "pattern_cos": True}
    assert tolerance.within({"asr_exact": 0.47, "pattern_cos": 0.84}, old) == {"asr_exact": False,
                                                                               "pattern_cos": True}
    assert tolerance.within({"asr_exact": 0.6, "pattern_cos": 0.78}, old)["pattern_cos"] is False


def test_refuses_a_folder_that_is_not_a_checkout(tmp_path, capsys):
    assert tolerance.main(["--before", str(tmp_path)]) == 2
    assert "is not a pdfast checkout" in capsys.readouterr().err


def test_levers_change_one_thing_each():
    vs = levers.variants(with_compile=True)
    assert vs["pdfast 0.1 (full verdict chain)"]["extra"] == ["--eval-steps", "1000"]
    assert vs["the defaults (verdict chain 100)"]["extra"] == [] and vs["the defaults, one thread"]["threads"] == 1
    assert "--surrogate-steps" in vs["+ cheaper surrogate (not taken)"]["extra"]
    assert vs["+ 20 Adam steps (not taken)"]["extra"] == ["--epochs", "20"]
    assert vs["the defaults + compile on"]["extra"] == ["--compile", "on"]


def test_the_frontier_applies_the_tolerance_rule_per_seed():
    old = [{"asr_exact": 0.89, "pattern_cos": 0.95, "verdict": "backdoored"},
           {"asr_exact": 0.91, "pattern_cos": 0.97, "verdict": "backdoored"}]
    row = {"asr_exact": 0.89, "pattern_cos": 0.96, "verdict": "backdoored"}
    assert speed_frontier.passes(row, old) == "yes"
    assert speed_frontier.passes({**row, "asr_exact": 0.875}, old) == "**no**"
    assert speed_frontier.passes({**row, "verdict": "clean"}, old) == "**no**"
    assert speed_frontier.passes(row, None) == "-"
    assert all("--surrogate-steps" in v for k, v in speed_frontier.CANDIDATES.items() if k != "defaults")
    assert speed_frontier.CANDIDATES["defaults"] == ()
