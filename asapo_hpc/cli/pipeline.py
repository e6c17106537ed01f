"""``asapo-hpc pipeline run FILE``: run a pipeline file to its end (see asapo_hpc.pipeline)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``pipeline``."""
    p.add_argument("action", choices=["run"])
    p.add_argument("file", help="pipeline file (TOML); see asapo_hpc.pipeline.spec")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    """0 when every stage finished; 1 when a stage failed (named on stderr); 2 bad input."""
    from asapo_hpc.cli.progress import StatusLine, pipeline_status
    from asapo_hpc.errors import AsapoError
    from asapo_hpc.pipeline import PipelineError, PipelineSpec, run_pipeline

    line = StatusLine()
    try:
        spec = PipelineSpec.from_file(args.file)
        result = run_pipeline(spec, on_tick=None if args.quiet else
                              lambda status: line.show(pipeline_status(status)))
    except PipelineError as exc:
        line.end()
        print(f"asapo-hpc pipeline: {exc}", file=sys.stderr)
        return 1
    except AsapoError as exc:
        line.end()
        print(f"asapo-hpc pipeline: {exc}", file=sys.stderr)
        return 2
    line.end()
    print(f"asapo-hpc pipeline: done in {result.seconds:.1f} s; frames per stage: "
          f"{result.stage_frames}")
    for source in spec.sources:
        if source.record:
            for path in result.files(source.name)[:1]:
                print(f"  {source.name}: {path}")
    return 0
