#!/usr/bin/env bash
# Compatibility shim for the reference's `source /src/setup.sh`, which put /src/slowfast on
# PYTHONPATH for its SlowFast code. Here it puts this checkout's src/ (/src/src in the
# container) first instead, so the legacy scripts and `python -m hero_features` use the
# mounted source. Sourcing it again does not add the folder twice; nothing else is changed.
# shellcheck disable=SC2128  # BASH_SOURCE's first element is what is wanted
_hero_features_src="$(cd -- "$(dirname -- "${BASH_SOURCE:-/src/setup.sh}")" && pwd -P)/src"
case ":${PYTHONPATH:-}:" in
    ":${_hero_features_src}:"*) ;;
    *) PYTHONPATH="${_hero_features_src}${PYTHONPATH:+:${PYTHONPATH}}" ;;
esac
export PYTHONPATH
unset _hero_features_src
echo "$PYTHONPATH"
