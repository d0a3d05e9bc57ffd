"""A performance model of the strategies' schedules, to project them beyond this machine.

    profile.py    per-layer compute costs of one worker (plain JSON; measured or hand-made)
    measure.py    measuring a profile here, or extracting one from a run's timeline.json
    network.py    allreduce closed forms (alpha, beta, gamma), algorithms, presets' format
    presets.py    named networks and the paper's hardware, each number with its source
    calibrate.py  fitting a network's constants from allreduce sweeps on an emulated cluster
    simulate.py   the event simulation (training thread, CPU sharing, link sharing)
    schedules.py  each strategy's program: as implemented, and the ideal bound
    validate.py   predicted vs measured iteration time over run directories
    project.py    sweeps to the paper's scale: tables and plots
    cli.py        asyncsgd-profile and asyncsgd-project

The model's only inputs are a profile and a network; docs/projection.md has
the formats, the rules and the validation.
"""
