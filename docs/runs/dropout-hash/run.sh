#!/bin/bash
# The default recipe (`nnscratch train --seed S`) on the code with the 32-bit dropout
# hash (the commit after e473b83, and later), one run after another; wall time and
# peak RSS of each whole command to times.txt.
set -u
for s in 0 1 2; do
  /usr/bin/time -o t.tmp -f "%e s wall, %M KB" \
    nnscratch train --seed $s --out L_s$s > L_s$s.log 2>&1
  echo "L_s$s: $(cat t.tmp)" >> times.txt
done
rm -f t.tmp
