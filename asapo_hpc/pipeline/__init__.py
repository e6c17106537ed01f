"""Pipelines: stages of workers between rings, run as processes, results recorded to HDF5.

``PipelineSpec.from_file(path)`` reads a pipeline file (see ``pipeline.spec``);
``run_pipeline(spec)`` runs it (see ``pipeline.runner``); ``pipeline.results`` reads the
recorded profiles and the per-stage latencies back.
"""

from asapo_hpc.pipeline.runner import (
    PipelineError,
    PipelineResult,
    PipelineRunner,
    PipelineStatus,
    run_pipeline,
)
from asapo_hpc.pipeline.spec import PipelineSpec, SimulateSpec, SourceSpec, StageSpec

__all__ = ["PipelineError", "PipelineResult", "PipelineRunner", "PipelineSpec",
           "PipelineStatus", "SimulateSpec", "SourceSpec", "StageSpec", "run_pipeline"]
