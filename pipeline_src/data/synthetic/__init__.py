"""Physically motivated synthetic datasets, written in the real datasets' layouts.

    python -m pipeline_src synthesize {defocus,motion,detection} --preset P --seed S --out DIR

Scenes are layers at known depths (scene.py: dead-leaves shapes and scikit-image's bundled photographs).
Defocus comes from a thin lens (optics.py: circle of confusion, disc and half-disc PSFs) applied slice by
slice with occlusion-aware compositing in linear light (compositing.py); dual-pixel views use the two
half-aperture PSFs. Motion blur averages 7-13 sharp sub-frames of layers moving on their own paths
(motion.py). Sensor noise is added in linear light, then the sRGB curve and quantisation (noise.py, srgb.py).
Each kind's writer (defocus.py, motion.py, detection.py) puts files where DPDD, GoPro and CUHK put theirs;
generate.py runs the images in parallel into a folder that is renamed into place only when complete.
"""

# Bump when the same seed and preset would produce different bytes; recorded in every meta.json.
GENERATOR_VERSION = "synthetic-1"
