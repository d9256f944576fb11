"""The work the plan reads off a run: the refinement's steps are those its truncated schedule runs."""

import pytest

from longcat_jax.generate import parse_request
from longcat_jax.memory.workloads import run_work
from longcat_jax.pipelines.scheduler import make_schedule, start_at
from longcat_jax.pipelines.tasks import plan_run


@pytest.mark.parametrize("steps", [2, 4, 7, 10, 50])
def test_the_refinement_runs_as_many_steps_as_planned(tmp_path, steps):
    request = parse_request(["--refine", "--refine-inference-steps", str(steps), "--context-parallel", "1",
                             "--output-path", str(tmp_path / "out.mp4")])
    run = plan_run(request)
    work = run_work(run.stages, prompts=1, text_length=64)
    refine = next(stage for stage in work.dit if stage.name == "refine denoising")
    truncated = start_at(make_schedule(steps), run.stages.refinement.t_thresh)
    assert refine.steps == truncated.num_steps
