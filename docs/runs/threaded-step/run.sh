#!/bin/bash
# The default recipe (`nnscratch train --seed S`) with the threaded step (T_sS) and
# with the layer-by-layer step (L_sS, NNSCRATCH_THREADED_STEP=0), alternating, one
# after another; wall time and peak RSS of each whole command to times.txt.
set -u
for s in 0 1 2; do
  for c in T L; do
    flag=1; [ $c = L ] && flag=0
    NNSCRATCH_THREADED_STEP=$flag /usr/bin/time -o t.tmp -f "%e s wall, %M KB" \
      nnscratch train --seed $s --out ${c}_s$s > ${c}_s$s.log 2>&1
    echo "${c}_s$s: $(cat t.tmp)" >> times.txt
  done
done
rm -f t.tmp
