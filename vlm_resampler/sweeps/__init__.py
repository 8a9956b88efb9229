"""Sweeps (launch/train.py -m) and their summaries (launch/summarize.py).

submit.py     before Hydra submits: the sweep directory, its conf/ snapshot, sweep.json, job dirs
dirs.py       names in a sweep directory; the job-directory resolver (<num>_<hash of overrides>)
callbacks.py  the Hydra callback that fixes a sweep's ${now:} values for all its jobs
check.py      every job validated and its model built on the meta device before submission
job.py        eval_after: evaluate a finished job's last stage
summarize.py  summary.csv / .md / .png over the jobs
resume.py     submit a sweep's unfinished jobs again, into their own directories
slurm.py      what squeue / sacct still know about a sweep's jobs
"""
