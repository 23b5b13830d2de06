"""python -m ctxsae.report <sweep dir>: the sweep report (ctxsae.report.sweep)."""

from ctxsae.report.sweep import main

main()
