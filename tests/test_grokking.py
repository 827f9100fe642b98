"""End to end: a small run really groks within CI's means (the session's shared grokked run)."""


def test_small_modular_addition_run_groks(grokked_run):
    s = grokked_run.summary()
    # memorises first, generalises much later: the grokking signature, not just learning
    assert s["memorised_step"] is not None and s["grokked_step"] is not None
    assert s["grokked_step"] >= 2 * s["memorised_step"]
    assert s["train_acc"] == 1.0
    assert s["test_acc"] >= 0.95
