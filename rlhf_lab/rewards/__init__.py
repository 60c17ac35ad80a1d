"""Reward-model objectives: how preference records become a loss on sequence scores."""
