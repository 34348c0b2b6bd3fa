"""Rollout and teacher-prefill backends behind small protocols."""

from mopdx.backends.base import RolloutBackend, Rollouts, ScoreRequest, TeacherOutput, TeacherScorer

__all__ = ["RolloutBackend", "Rollouts", "ScoreRequest", "TeacherOutput", "TeacherScorer"]
