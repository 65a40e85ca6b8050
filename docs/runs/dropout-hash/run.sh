#!/bin/bash
# The default recipe (`nnscratch train --seed S`) on the code with the 32-bit dropout
# hash, one run after another; wall time and peak RSS of each whole command to
# times.txt. Runs are named PREFIX_sS: ./run.sh L (on b120b54), ./run.sh M (on d831136).
set -u
P=${1:?usage: ./run.sh PREFIX}
for s in 0 1 2; do
  /usr/bin/time -o t.tmp -f "%e s wall, %M KB" \
    nnscratch train --seed $s --out ${P}_s$s > ${P}_s$s.log 2>&1
  echo "${P}_s$s: $(cat t.tmp)" >> times.txt
done
rm -f t.tmp
