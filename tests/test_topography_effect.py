"""The STC loss makes a network topographic: same seed and budget, `stc` against `none`."""

import pytest

from tdsnn.train import train


@pytest.mark.slow
def test_stc_raises_the_first_areas_topography_score_over_none(tiny_config, tmp_path):
    # V1 alone (the cheapest stack, ~170 images/s on one thread) at width 0.25 and 24 px as in
    # the default run: ~18 units per V1 neighbourhood window; smaller models leave ~4 and the
    # held-out score is mostly noise. Batches of 64 estimate the batch Pearson the loss aligns
    # well enough; 64 steps are about the fewest that move it (32 did not, batches of 128 left
    # V1 silent). The task itself barely starts learning at this budget.
    base = tiny_config.with_overrides(
        {
            "model.area_stack": "v1",
            "model.width": 0.25,
            "data.image_size": 24,
            "data.train_size": 2048,
            "data.test_size": 256,
            "optim.epochs": 2,
            "optim.batch_size": 64,
            "run.log_every": 32,
        }
    )
    scores = {}
    for preset in ("none", "stc"):
        # topo.name brings the preset's values, so the warm-up is set in the same overrides
        overrides = {"topo.name": preset, "run.out": str(tmp_path / preset)}
        if preset == "stc":
            overrides["topo.warmup"] = 0.0  # the whole budget with the loss at full weight
        scores[preset] = train(base.with_overrides(overrides))["topography"]["V1"][
            "topography_score"
        ]
    print(f"V1 topography score: none {scores['none']:.3f}, stc {scores['stc']:.3f}")
    # stc - none measured at this budget, seeds 0-4: 0.098, 0.187, 0.217, 0.118, 0.253
    # (none between -0.033 and 0.023)
    assert scores["stc"] > scores["none"] + 0.05, scores
