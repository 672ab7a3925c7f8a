"""The built-in schedulers in code order (the integer code is the index): the one table dispatch.py and
the registry share."""

from lapsbench.schedulers.fcfs import FCFS
from lapsbench.schedulers.laps_sd import LAPSSD
from lapsbench.schedulers.las import LAS
from lapsbench.schedulers.ltr import LTR
from lapsbench.schedulers.mlfq import MLFQ
from lapsbench.schedulers.rr import RoundRobin
from lapsbench.schedulers.sjf import SJF
from lapsbench.schedulers.skip_join import SkipJoinMLFQ
from lapsbench.schedulers.srpt import SRPT
from lapsbench.schedulers.srpt_sd import SRPTSD
from lapsbench.schedulers.ssjf import SSJF

BUILTIN = (FCFS, SJF, SRPT, LAS, RoundRobin, SSJF, SRPTSD, MLFQ, SkipJoinMLFQ, LTR, LAPSSD)
