"""Batch machinery behind :mod:`attnvis.batch.run`: inputs, decoding, stages, manifest, engines.

The stages (:mod:`attnvis.batch.stages`) are plain functions over picklable
values so that every engine (the local thread engine here, a cluster engine
later) runs the same code and writes the same bytes.
"""
