#!/bin/sh
# score.sh OUTBOX: SpamAssassin (stock Debian rules, -L: local tests only) per distinct starter email
cd "$1" && for n in 1 3 5 7 9 10 11 12 13 14 15 16; do f=d$n.autofunnel@yoga.example.eml; out=$(spamassassin -t -L < $f 2>/dev/null); score=$(echo "$out" | grep -m1 "Content analysis details" | sed 's/.*(\(.*\) points.*/\1/'); rules=$(echo "$out" | sed -n '/Content analysis details/,$p' | grep -E "^ *-?[0-9]+\.[0-9]+ [A-Z]" | awk '$1!="0.0" && $1!="-0.0" {print $1" "$2}' | tr '\n' ' '); echo "$score | $(grep -m1 '^Subject:' $f | cut -c10-60) | $rules"; done
