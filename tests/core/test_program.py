import pytest

from polar_rl.program import Action, Program, ProgramError


def test_full_program_is_identity():
    p = Program.full(6)
    assert p.runs == (1,) * 6
    assert p.layer_calls == (0, 1, 2, 3, 4, 5)
    assert p.num_calls == 6 and p.compute_fraction == 1.0 and p.is_identity


def test_layer_calls_skip_and_loop_blocks():
    p = Program.from_runs([1, 2, 0], num_layers=6, block_size=2)
    assert p.layer_calls == (0, 1, 2, 3, 2, 3)
    assert p.num_calls == 6
    assert Program.from_runs([0, 1, 2, 1], num_layers=4).layer_calls == (1, 2, 2, 3)


def test_loop_runs_configurable():
    p = Program.from_runs([3, 0], num_layers=2, loop_runs=3)
    assert p.layer_calls == (0, 0, 0)
    assert p.compute_fraction == 1.5


def test_from_actions_maps_loop_to_loop_runs():
    p = Program.from_actions([Action.SKIP, Action.EXECUTE, Action.LOOP], num_layers=3, loop_runs=3)
    assert p.runs == (0, 1, 3)


def test_immutable_and_hashable():
    a = Program.from_runs([1, 0, 2], 3)
    b = Program.from_runs((1, 0, 2), 3, model_name="other")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.runs = (1, 1, 1)  # type: ignore[misc]


def test_json_round_trip_carries_model_and_layers():
    p = Program.from_runs([1, 0, 2, 1], num_layers=8, block_size=2, model_name="smollm2-135m")
    q = Program.from_json(p.to_json())
    assert q == p and q.model_name == "smollm2-135m" and q.num_layers == 8 and q.block_size == 2


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(runs=(1, 1), num_layers=3), "2 run counts but the model has 3 blocks"),
        (dict(runs=(1, 5, 1), num_layers=3), "run count 5 for block 1"),
        (dict(runs=(1, -1, 1), num_layers=3), "run count -1"),
        (dict(runs=(1,) * 4, num_layers=30, block_size=4), "block_size=4 does not divide num_layers=30"),
        (dict(runs=(1,), num_layers=1, loop_runs=1), "loop_runs must be an int >= 2"),
        (dict(runs=(), num_layers=0), "num_layers must be a positive int"),
    ],
)
def test_bad_programs_raise_clear_errors(kwargs, needle):
    with pytest.raises(ProgramError, match=needle.replace("(", r"\(")):
        Program(**kwargs)


def test_block_size_error_lists_divisors():
    with pytest.raises(ProgramError, match=r"\[1, 2, 3, 5, 6, 10, 15, 30\]"):
        Program.full(30, block_size=4)


def test_bad_json():
    with pytest.raises(ProgramError, match="does not parse"):
        Program.from_json("{nope")
    with pytest.raises(ProgramError, match="missing"):
        Program.from_json('{"runs": [1]}')
