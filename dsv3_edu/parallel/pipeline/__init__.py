"""Pipeline parallelism: schedules as data, a simulator (the report's Table 2), a real executor.

    from dsv3_edu.parallel.pipeline import Times, dualpipe, simulate
    from dsv3_edu.viz.pipeline import plot_timeline          # the pictures live in viz (matplotlib)
    sched = dualpipe(pp=8, n_micro=20)
    res = simulate(sched, Times(F=1, B=1, W=1, FB=2.5))
    plot_timeline(sched, result=res)

See docs/pipeline.md for the conventions (B = input-grad part, W = weight-grad part, F&B).
"""
from .executor import (
    P2P,
    LayerStack,
    StageRunner,
    build_stage,
    build_stages,
    make_data,
    make_p2p_groups,
    max_grad_error,
    mlp_stage,
    pipeline_step,
    pipeline_steps,
    reference_step,
    spawn_run,
    stages_of_rank,
    sync_dualpipe_grads,
)
from .schedules import (
    KINDS,
    METHODS,
    Op,
    check_schedule,
    dualpipe,
    dualpipev,
    make_schedule,
    n_stages_of,
    one_f_one_b,
    topological_order,
    zb1p,
)
from .simulator import (
    SimResult,
    Times,
    bubble_table,
    format_bubble_table,
    simulate,
    table2_activations,
    table2_bubble,
    table2_holds,
)
from .split_backward import backward_full, backward_input, backward_weight

__all__ = [
    "Op", "KINDS", "METHODS", "one_f_one_b", "zb1p", "dualpipe", "dualpipev", "make_schedule", "check_schedule",
    "n_stages_of", "topological_order",
    "Times", "SimResult", "simulate", "table2_bubble", "table2_holds", "table2_activations", "bubble_table",
    "format_bubble_table",
    "backward_input", "backward_weight", "backward_full",
    "mlp_stage", "LayerStack", "build_stage", "build_stages", "stages_of_rank", "P2P", "make_p2p_groups", "StageRunner",
    "sync_dualpipe_grads", "spawn_run", "make_data", "reference_step", "pipeline_step", "pipeline_steps",
    "max_grad_error",
]
