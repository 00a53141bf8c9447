"""The strength controller (regularizers/control.py): its arithmetic, its place in the
regularizers (penalty, adapt, the logged strength and budget, a compiled step), and a target
reached on a small real task."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import handbuilt
from morphscope.errors import MorphScopeError
from morphscope.regularizers.control import StrengthController
from morphscope.regularizers.torch_regularizer import FlopsRegularizer, StructureLogger

EXAMPLE = torch.zeros(1, 3, handbuilt.H, handbuilt.W)


def test_budget_and_first_strength_from_the_seed():
    controller = StrengthController.for_target(seed_cost=1000.0, seed_penalty=50.0, target=0.25)
    assert controller.budget == 250.0
    assert controller.strength == pytest.approx(0.1 / 50.0)  # strength x G(seed) = 0.1
    assert StrengthController.for_target(1000.0, 50.0, budget=300.0, strength=2e-3).strength == pytest.approx(2e-3)


def test_the_strength_stops_where_the_seed_penalty_is_a_hundred_unit_losses():
    controller = StrengthController.for_target(seed_cost=1000.0, seed_penalty=50.0, target=0.1)
    for step in range(0, 2000, 10):  # the cost never moves: the strength rises by exp(0.1) a step ...
        controller.update(1000.0, step)
    assert controller.strength == pytest.approx(100.0 / 50.0)  # ... up to 100 / G(seed), not beyond


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give target= .* or budget="),
    ({"target": 0.5, "budget": 10.0}, "not both"),
    ({"target": 1.5}, r"target=1.5: a fraction of the seed's cost, in \(0, 1\]"),
    ({"target": 0.0}, r"target=0.0"),
    ({"budget": -1.0}, "budget=-1.0: must be a cost above zero"),
    ({"budget": float("nan")}, "budget=nan"),
    ({"target": 0.5, "strength": 0.0}, "strength=0.0: must be above zero"),
    ({"target": 0.5, "every": 0}, "adapt_every=0: a whole number of steps, at least 1"),
])
def test_bad_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(MorphScopeError, match=message) as err:
        StrengthController.for_target(1000.0, 50.0, **kwargs)
    assert "\n" not in str(err.value)


def test_update_is_the_integral_with_lead_on_log_strength():
    controller = StrengthController(budget=100.0, seed_cost=400.0, log_strength=0.0, every=10)
    # First update, cost 200: error log 2 = 0.6931, no trend yet; clipped to 0.5, gain 0.2.
    assert controller.update(200.0, step=0) == pytest.approx(math.exp(0.1))
    # Cost 190: trend 0.2 x log(190/200) = -0.0102587; log 1.9 + 15 x trend = 0.641854 - 0.153880
    # = 0.487974, gain 0.2 (above the budget): +0.0975947.
    assert controller.update(190.0, step=10) == pytest.approx(math.exp(0.1975947), rel=1e-6)
    # Cost 150: trend -0.0102587 + 0.2 x (log(150/190) + 0.0102587) = -0.0554848;
    # log 1.5 + 15 x trend = 0.405465 - 0.832272 = -0.426807: falling fast enough, the strength
    # falls, still at gain 0.2 above the budget: -0.0853614.
    assert controller.update(150.0, step=20) == pytest.approx(math.exp(0.1122333), rel=1e-6)
    # Cost 90, below the budget: trend -0.1465531, log 0.9 + 15 x trend = -2.3037, clipped to
    # -0.5, gain 0.2 x 5.
    assert controller.update(90.0, step=30) == pytest.approx(math.exp(-0.3877667), rel=1e-6)
    assert controller.due(40) and not controller.due(30) and not controller.due(45)


def test_penalty_needs_a_strength_and_is_strength_times_the_loss():
    model = handbuilt.torch_residual_net()
    with pytest.raises(MorphScopeError, match="no strength: pass strength= .* or target="):
        FlopsRegularizer(model, EXAMPLE).penalty()
    reg = FlopsRegularizer(model, EXAMPLE, strength=3e-9)
    assert reg.strength == 3e-9 and reg.controller is None
    assert reg.penalty().item() == pytest.approx(3e-9 * reg.loss().item(), rel=1e-6)


def test_logger_records_the_strength_and_budget_and_a_compiled_step_reads_the_new_strength(tmp_path):
    from torch._dynamo.testing import CompileCounter

    model = handbuilt.torch_residual_net()
    reg = FlopsRegularizer(model, EXAMPLE, target=0.5, adapt_every=1)
    first = reg.strength
    seed_g = reg.loss_value()
    assert first == pytest.approx(0.1 / seed_g)
    counter = CompileCounter()
    step = torch.compile(lambda: reg.penalty(), backend=counter, fullgraph=True)
    assert step().item() == pytest.approx(first * seed_g, rel=1e-6)
    logger = StructureLogger(reg, tmp_path / "run", every=1)
    logger.step(0, loss=1.0)  # adapts: the seed's cost is twice the budget, the strength rises
    assert reg.strength == pytest.approx(first * math.exp(0.2 * 0.5))
    assert step().item() == pytest.approx(reg.strength * seed_g, rel=1e-6)
    assert counter.frame_count == 1  # the new strength without tracing again
    line = json.loads((tmp_path / "run" / "cost.jsonl").read_text())
    assert line["strength"] == reg.strength and line["budget"] == pytest.approx(line["cost"] / 2)
    logger.step(0, loss=1.0)  # the same step again (a callback and a logger): no second update
    assert reg.strength == pytest.approx(first * math.exp(0.2 * 0.5))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run below is then the same on every machine with these builds
    yield
    torch.set_num_threads(threads)


def test_a_target_is_reached_within_five_percent_on_digits(one_thread):
    """The digits example's seed network (examples/train_digits.py), Adam at lr 1e-2, batch
    32, steered to half its FLOPs from its first step, no strength given."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from train_digits import SeedNet, load_digits_tensors

    torch.manual_seed(0)
    x, y = load_digits_tensors(0)[0]
    model = SeedNet()
    reg = FlopsRegularizer(model, x[:1], target=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    costs = []
    for step in range(900):
        batch = torch.randint(0, len(x), (32,))
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch]) + reg.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reg.adapt(step)
        if step % 10 == 0:
            costs.append(reg.cost() / reg.controller.seed_cost)
    assert costs[0] == 1.0
    last = costs[-10:]  # the last 100 steps: +-5% of 0.5 on average, none more than 10% off
    assert 0.475 <= sum(last) / len(last) <= 0.525 and all(0.45 <= c <= 0.55 for c in last)
