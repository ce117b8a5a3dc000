#!/bin/sh
# Builds a C program with nothing but `cc $(pkg-config --cflags --libs kvr)` and runs it.
# Args: CC PKG_CONFIG_DIR SOURCE OUTPUT
set -eu
cc=$1; pcdir=$2; src=$3; out=$4
export PKG_CONFIG_PATH="$pcdir"
cflags=$(pkg-config --cflags kvr)
libs=$(pkg-config --libs kvr)
libdir=$(pkg-config --variable=libdir kvr)
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $cflags "$src" -o "$out" $libs -Wl,-rpath,"$libdir"
"$out"
