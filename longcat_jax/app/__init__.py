"""`python -m longcat_jax.app`: a web app (Gradio) that keeps LongCat-Video loaded and serves every task of the CLI.

    engine      the job queue and the warm models: one GPU job at a time, cancel, progress, results (each with
                the CLI's provenance sidecar, `longcat_jax.provenance`)
    models      the pipeline loaded once (again only for another quantization, or a memory plan it cannot serve)
                and the user's LoRAs
    placement   which loaded placement (memory plan) serves which request
    progress    a job's progress: the stage running, its denoising step (`longcat_jax.progress.on_steps`), and
                the cancel check between steps
    jobs        a job's state and what the page shows of it
    form        the page's fields as a `RunRequest` (the CLI's flags), uploads checked
    views       what the page shows of the engine, as plain values (queue rows, captions, a result's settings)
    confine     the guard that serves files from the output folder only
    ui          the Gradio page and its launch (with confine, the only modules that import Gradio's packages, and
                only when the app starts)

The engine runs the CLI's task registry (`longcat_jax.pipelines.tasks`): `plan_run` checks a request before it is
queued (the CLI's messages, shown in the page), and each task's `run` runs it on the pipeline kept warm.
"""
