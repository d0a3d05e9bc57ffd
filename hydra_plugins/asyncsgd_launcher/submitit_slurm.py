"""``hydra/launcher=submitit_slurm``: hydra-submitit-launcher's SlurmLauncher, with
requeue that continues from the checkpoint and a sweep that outlives a failed job.

The behaviour is in :mod:`asyncsgd.launch.slurm` (in the job) and
:mod:`asyncsgd.launch.slurm_sweep` (submitting side); this module stays small because
Hydra imports every module of ``hydra_plugins`` at start-up.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


class SubmititSlurmLauncher(SlurmLauncher):
    """One SLURM job per run of the sweep (a job array), all submitted at once."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """In the job: compose and run it as the plugin does, with asyncsgd's schemas registered
        as on the submitting side (which also quiets Hydra's schema-matching warning)."""
        from asyncsgd.config import register_configs

        register_configs()
        return super().__call__(*args, **kwargs)

    def checkpoint(self, sweep_overrides: List[str], *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue protocol: the job that runs after a requeue resumes its run.

        Called in the job (rank 0) when it is preempted or timed out, after the
        workers stopped together and wrote a checkpoint in the run dir.
        """
        from hydra.core.hydra_config import HydraConfig

        from asyncsgd.launch.slurm import resume_overrides

        run_dir = HydraConfig.get().runtime.output_dir
        return super().checkpoint(resume_overrides(sweep_overrides, run_dir), *args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit like the plugin does, then wait for *every* job (the plugin stops at the
        first failure) and report each; failures are listed, not raised."""
        import submitit

        from asyncsgd.launch.slurm_sweep import job_outcome, report_outcomes, wait_for_jobs

        assert self.config is not None and self.hydra_context is not None
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")

        params, run_dirs, configs = [], [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.num = idx
            run_dirs.append(Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir))
            configs.append(config)
        jobs = executor.map_array(self, *zip(*params))
        log.info("SLURM jobs: %s", " ".join(str(j.job_id) for j in jobs))
        wait_for_jobs(jobs, run_dirs)

        returns, outcomes = [], []
        for (overrides, _, idx, _, _), job, run_dir, config in zip(params, jobs, run_dirs, configs):
            result, status, error = job_outcome(job, run_dir, config)
            outcomes.append((idx, job, run_dir, status, error))
            if not isinstance(result, JobReturn) or result.status != JobStatus.COMPLETED:
                # Recorded and listed above; Hydra's sweeper would raise on a FAILED return.
                result = JobReturn(overrides=overrides, working_dir=str(run_dir), status=JobStatus.COMPLETED)
            returns.append(result)
        report_outcomes(outcomes)
        return returns
