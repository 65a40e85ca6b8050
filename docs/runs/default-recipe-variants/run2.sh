#!/bin/bash
cd /tmp/s4
while [ ! -f /tmp/s4/DONE ]; do sleep 5; done
PID=$(pgrep -f "resume L600_s2")
kill -STOP $PID
for s in 0 1 2; do
 for c in D F; do
  case $c in D) args="--batch-size 256 --epochs 20";; F) args="--batch-size 512";; esac
  /usr/bin/time -f "%e s wall, %M KB" env PYTHONPATH=/tmp/frozen_s4 python -m nnscratch.cli train $args --seed $s --out ${c}_s$s > ${c}_s$s.log 2>&1
 done
done
kill -CONT $PID
echo done > /tmp/s4/DONE2
