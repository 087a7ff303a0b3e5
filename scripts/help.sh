# Sourced by the shell entry points (`source .../scripts/help.sh "$@"`): `-h` or `--help` among the
# arguments prints the calling script's header comment (from line 2 to the first non-comment line)
# and exits 0, before the script does anything else.
for _help_arg in "$@"; do
  if [[ $_help_arg == -h || $_help_arg == --help ]]; then
    sed -n '2,/^[^#]/p' "${BASH_SOURCE[1]}" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
  fi
done
unset _help_arg
