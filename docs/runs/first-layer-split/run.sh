#!/bin/bash
# The default recipe (`nnscratch train --seed S`) on the code with the first layer's
# forward split by input columns (5526fe5 and later), one run after another; wall time
# and peak RSS of each whole command to times.txt.
set -u
for s in 0 1 2; do
  /usr/bin/time -o t.tmp -f "%e s wall, %M KB" \
    nnscratch train --seed $s --out K_s$s > K_s$s.log 2>&1
  echo "K_s$s: $(cat t.tmp)" >> times.txt
done
rm -f t.tmp
