"""The image side: image readers, taggers (trained, open_clip, RAM++), image and matched counts."""
