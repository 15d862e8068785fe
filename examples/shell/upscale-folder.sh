#!/usr/bin/env bash
# Upscale every image of a folder into another folder with tiledsr, one tiledsr process per
# file, optionally sharpening / converting each result and drawing a contact sheet with
# ImageMagick.
#
#   upscale-folder.sh [options] IN_DIR OUT_DIR
#     -p PRESET      tiledsr preset (default photo-x4)
#     -s SCALE       final scale, e.g. 2 or 4 (default: the preset's)
#     -P PRINT       print size instead of a scale, e.g. 24x36in@300
#     -r             resume: continue files an interrupted run left unfinished (tiledsr --resume)
#     -q             no progress bar from tiledsr
#     -S AMOUNT      ImageMagick: unsharp-mask each result, e.g. 0.6
#     -t EXT         ImageMagick: also convert each result to EXT (jpg, webp, ...) next to it
#     -c SHEET.jpg   ImageMagick: a contact sheet of all results (montage)
#
# Why one process per file and not one batch call (`tiledsr upscale IN_DIR --out-dir OUT_DIR`)?
# A batch checks every input before any work and stops at the first bad one with exit code 2,
# and its exit code speaks for the whole batch. One call per file costs the start-up (a few
# seconds: Python, torch, the model) for each image, but a broken file only skips that file,
# each file gets its own exit code and message below, an interrupted file can be resumed on its
# own, and the loop can stop at once on Ctrl-C. For hundreds of images known to be good, the
# batch call is faster.
#
# Exit status: 0 when every image was upscaled; 130 when interrupted (Ctrl-C); otherwise the
# tiledsr exit code of the first failure (2 bad input, 3 model missing, 4 out of memory, 1 other).
set -u

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

preset=photo-x4 target=() resume=() progress=(--progress bar) sharpen="" to_ext="" sheet=""
while getopts ":p:s:P:rqS:t:c:h" opt; do
  case $opt in
    p) preset=$OPTARG ;;
    s) target=(--scale "$OPTARG") ;;
    P) target=(--print "$OPTARG") ;;
    r) resume=(--resume) ;;
    q) progress=(--progress none) ;;
    S) sharpen=$OPTARG ;;
    t) to_ext=${OPTARG#.} ;;
    c) sheet=$OPTARG ;;
    h) usage ;;
    \?) echo "upscale-folder: unknown option -$OPTARG" >&2; usage ;;
    :) echo "upscale-folder: option -$OPTARG needs a value" >&2; usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 2 ] || usage
in_dir=$1 out_dir=$2
[ -d "$in_dir" ] || { echo "upscale-folder: $in_dir is not a folder" >&2; exit 2; }
mkdir -p -- "$out_dir" || exit 1

# tiledsr: $TILEDSR, else on PATH.
tiledsr=${TILEDSR:-tiledsr}
if ! command -v "$tiledsr" >/dev/null 2>&1; then
  echo "upscale-folder: tiledsr not found; put it on PATH or set TILEDSR" >&2
  exit 1
fi

# ImageMagick 7 is `magick`, 6 is `convert` (only when it really is ImageMagick).
magick=()
if command -v magick >/dev/null 2>&1; then magick=(magick)
elif convert -version 2>/dev/null | grep -q 'ImageMagick'; then magick=(convert)
fi
if [ ${#magick[@]} -eq 0 ] && { [ -n "$sharpen" ] || [ -n "$to_ext" ] || [ -n "$sheet" ]; }; then
  echo "upscale-folder: warning: ImageMagick not found; -S, -t and -c are skipped" >&2
  sharpen="" to_ext="" sheet=""
fi

# Ctrl-C: tiledsr (in the same process group) gets it too and exits 130; the trap makes sure
# the loop stops even when the signal arrives between two files.
interrupted=0
trap 'interrupted=1' INT TERM

done_files=() failed=0 first_failure=0 n=0
while IFS= read -r -d '' src; do
  [ $interrupted -eq 1 ] && break
  n=$((n + 1))
  name=$(basename -- "$src")
  out="$out_dir/${name%.*}.png"
  for earlier in ${done_files[@]+"${done_files[@]}"}; do  # a.png and a.jpg: keep both
    [ "$earlier" = "$out" ] && out="$out_dir/$name.png"
  done
  echo "[$n] $name -> $out"
  # stdin from /dev/null: tiledsr must not read the file list this loop is reading.
  "$tiledsr" upscale "$src" -o "$out" --preset "$preset" ${target[@]+"${target[@]}"} \
    ${resume[@]+"${resume[@]}"} "${progress[@]}" --overwrite </dev/null
  rc=$?
  case $rc in
    0)
      done_files+=("$out")
      if [ -n "$sharpen" ]; then
        "${magick[@]}" "$out" -unsharp "0x1+${sharpen}+0.02" "$out" </dev/null \
          || echo "  warning: sharpening failed" >&2
      fi
      if [ -n "$to_ext" ]; then
        "${magick[@]}" "$out" -quality 92 "${out%.png}.$to_ext" </dev/null \
          || echo "  warning: conversion to $to_ext failed" >&2
      fi
      continue ;;
    2) echo "  skipped: tiledsr refused this file, the preset or the options (exit 2; see its error line above)" >&2 ;;
    3) echo "  stopped: a model is not available (exit 3); run 'tiledsr models' to see which, and" \
            "'tiledsr models fetch ID' when online" >&2 ;;
    4) echo "  skipped: out of memory even at the smallest tile (exit 4); try -p fast-x4 or a smaller image" >&2 ;;
    130|143|129)
      interrupted=1
      echo "  interrupted (exit $rc); re-run the same command with -r (tiledsr --resume)" \
           "to continue this file where it stopped" >&2 ;;
    *) echo "  failed: tiledsr exit $rc (a full disk or a bug; rerun tiledsr with --debug)" >&2 ;;
  esac
  failed=$((failed + 1))
  [ $first_failure -eq 0 ] && first_failure=$rc
  [ $rc -eq 3 ] && break           # every other file would need the same model
  [ $interrupted -eq 1 ] && break
done < <(find "$in_dir" -maxdepth 1 -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \
          -o -iname '*.tif' -o -iname '*.tiff' -o -iname '*.webp' \) -print0 | sort -z)

if [ -n "$sheet" ] && [ ${#done_files[@]} -gt 0 ] && [ $interrupted -eq 0 ]; then
  if command -v montage >/dev/null 2>&1; then
    montage "${done_files[@]}" -thumbnail 256x256 -label '%f' -geometry +4+4 "$sheet" </dev/null \
      && echo "contact sheet: $sheet" || echo "warning: the contact sheet failed" >&2
  else
    "${magick[@]}" "${done_files[@]}" -thumbnail 256x256 +append "$sheet" </dev/null \
      && echo "contact sheet: $sheet" || echo "warning: the contact sheet failed" >&2
  fi
fi

echo "upscaled ${#done_files[@]} of $n image(s) into $out_dir; $failed failed"
if [ $interrupted -eq 1 ]; then exit 130; fi
exit $first_failure
