#!/bin/bash
# Runs the candidates of PLAN.md one after another; wall time and peak RSS to times.txt.
set -u
for s in 0 1 2; do
  for c in G H I J; do
    case $c in
      G) args="--hidden 512 256 --epochs 50";;
      H) args="--hidden 768 384 --epochs 30";;
      I) args="--hidden 1024 --epochs 35";;
      J) args="--hidden 512 256 --dropout 0.4 --epochs 50";;
    esac
    /usr/bin/time -o t.tmp -f "%e s wall, %M KB" nnscratch train $args --seed $s --out ${c}_s$s > ${c}_s$s.log 2>&1
    echo "${c}_s$s: $(cat t.tmp)" >> times.txt
  done
done
rm -f t.tmp
