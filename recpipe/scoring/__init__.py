"""Scoring trained models: deep-model adapters shared by evaluation and the scoring job."""
