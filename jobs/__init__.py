"""Work that salvage runs on its pool: GPT training (jobs.gpt) and science (jobs.science).

This package never imports cluster or workers: a job gets what it needs as arguments.
"""
