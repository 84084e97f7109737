#!/bin/sh
# spam_score.sh OUTBOX: SpamAssassin (stock rules, -L: local tests only, no network) for every
# email in OUTBOX, one line each: score | subject | the rules that scored.
# Make the outbox with: python bench/render_starter_emails.py DIR [true|false]
cd "$1" || exit 1
for f in *.eml; do
    out=$(spamassassin -t -L < "$f" 2>/dev/null)
    score=$(echo "$out" | grep -m1 "Content analysis details" | sed 's/.*(\(.*\) points.*/\1/')
    rules=$(echo "$out" | sed -n '/Content analysis details/,$p' | grep -E "^ *-?[0-9]+\.[0-9]+ [A-Z]" | awk '$1!="0.0" && $1!="-0.0" {print $1" "$2}' | tr '\n' ' ')
    echo "$score | $(grep -m1 '^Subject:' "$f" | cut -c10-70) | $rules"
done
