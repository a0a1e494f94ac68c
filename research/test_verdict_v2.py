"""research/verdict_v2.py: thresholds come from dev alone and are applied unchanged to test."""
import verdict_v2


def _row(name, split, label, value):
    return {"name": name, "split": split, "size": 16, "label": label,
            **{s: value for s in verdict_v2.STATISTICS}}


def test_threshold_from_dev_only_then_applied_to_test():
    rows = [_row("b1", "dev", "backdoored", 0.1), _row("c1", "dev", "clean", 0.4),
            _row("b2", "test", "backdoored", 0.3), _row("c2", "test", "clean", 0.15)]
    r = verdict_v2.evaluate(rows, "pattern_effect", 16)
    assert abs(r["threshold"] - (0.1 * 0.4) ** 0.5) < 1e-12 and r["dev_separated"] is True
    assert r["dev"]["tpr"]["k"] == 1 and r["dev"]["tnr"]["k"] == 1
    assert r["test"]["tpr"]["k"] == 0 and r["test"]["tnr"]["k"] == 0  # 0.3 above 0.2, 0.15 below: both wrong
    assert r["test"]["auc"] == 0.0
    assert verdict_v2.evaluate(rows, "pattern_effect", 32) == {}  # no dev model of that size


def test_splits_keep_the_recipes_test_family_models_out_of_dev():
    split = verdict_v2.splits()
    assert split["v2-fam-vd16-ode-house-hat"] == "test"  # a family model in zoo v2's recipe: its split wins
    assert split["v2-fam-td16-blend-heart-cat"] == "test"
    assert split["v2-fam-vd16-ode-stop18-cat"] == "dev"  # issue 20's first family models: outside it, dev
