#!/bin/bash
cd /tmp/s4
PID=$(pgrep -f "resume L600_s2")
kill -STOP $PID
for s in 0 1 2; do
 for c in A B C; do
  case $c in A) args="--epochs 20";; B) args="--batch-size 256";; C) args="--batch-size 256 --lr 2e-3";; esac
  /usr/bin/time -f "%e s wall, %M KB" env PYTHONPATH=/tmp/frozen_s4 python -m nnscratch.cli train $args --seed $s --out ${c}_s$s > ${c}_s$s.log 2>&1
 done
done
kill -CONT $PID
echo done > /tmp/s4/DONE
