"""Evaluate open_clip models ourselves: zero-shot classification and image-text retrieval, per concept.

Why this module exists
    The study relates a model's *per-concept* performance to the concept's pretraining frequency. The
    release ships those numbers for its models only; to add models or datasets we must produce the same
    numbers, in the same files, so that ``helpers.release.tidy`` and every analysis downstream read them unchanged.
    Everything here is a library; the stage that runs it over ``params.yaml``'s ``evaluation`` section is
    wired elsewhere.

Public API::

    load_model(spec, device="cpu", precision="fp32") -> LoadedModel(model, preprocess, tokenizer, key, ...)
    load_dataset(spec, preprocess, *, name=None) -> EvalDataset(name, images, labels, class_names, captions, ...)
    model_specs(section) / dataset_specs(section)   # the ``models`` / ``datasets`` mappings, keys filled in
    image_embeddings(model, dataset, cache_dir=...) -> (N, D) float32, L2-normalised, cached
    class_embeddings(model, class_names, prompt_set, ...) -> (C, D) the zero-shot classifier, cached
    caption_embeddings(model, dataset, ...) -> (M, D), cached
    zero_shot_eval(model, dataset, prompt_set | [prompt sets], ...) -> tidy DataFrame
    retrieval_eval(model, dataset, concepts=None, ks=(1, 5, 10), ...) -> tidy DataFrame
    similarity_ranks(sim, correct) / recall_table(...)   # the retrieval definitions, on arrays
    to_release_json(df, out_dir) -> written paths       # the release's exact JSON files
    write_evaluations(df, path) / read_evaluations(path) # the tidy Parquet, checked by ``EVALUATIONS``

``params.yaml`` (the lead engineer wires the stage; this is the shape the helpers read)::

    evaluation:
      cache_dir: data/interim/evaluation/embeddings   # image/text embedding cache (.npy + .json)
      device: cuda                                    # cpu | cuda | cuda:1
      precision: fp16                                 # fp32 | fp16 | bf16 (autocast, GPU only)
      batch_size: 256
      num_workers: 8
      prompts: [class, simple, ensemble]
      models:                                         # key = the release-style model key
        backboneViT-B-16_pretrainedlaion400m:
          {name: ViT-B-16, pretrained: laion400m_e32}            # a tag: needs network or the HF cache
        backboneViT-B-16_pretrainedcc3m:
          {name: ViT-B-16, pretrained: models/cc3m_vitb16.pt}    # a local checkpoint: always works
        backboneRN50_pretrainedcc12m: {name: RN50-quickgelu, pretrained: cc12m}
        backbonemy-vit_pretrainedmine:
          {model_config: configs/my-vit.json, pretrained: models/mine.pt}   # name = the config's stem
      datasets:                                       # key = the dataset name (no underscores: see below)
        cifar10: {format: torchvision, name: CIFAR10, root: data/raw/torchvision, split: test}
        imagenet: {format: imagefolder, root: data/raw/imagenet/val, class_names_file: data/raw/imagenet/classes.txt}
        pets: {format: wds, paths: "data/raw/pets/test-{000..003}.tar", label_key: cls,
               class_names_file: data/raw/pets/classes.txt, templates: ["a photo of a {c}, a type of pet."]}
        coco: {format: wds, paths: "data/raw/coco/test-{000..009}.tar", task: retrieval, caption_ext: txt,
               concepts_file: data/processed/concepts/coco_concepts.txt}

Models (``load_model``)
    ``name`` (an open_clip model name; with ``model_config`` it defaults to the config file's stem, the name
    open_clip registers it under), ``pretrained`` (a tag of that model -- downloaded by open_clip, so it
    needs the network or a filled Hugging Face cache -- or a local checkpoint file, loaded by open_clip
    with ``torch.load(weights_only=True)``), ``model_config`` (a JSON open_clip config for a custom
    architecture), ``key`` (default ``backbone{name}_pretrained{tag or file stem}``, the release's key
    style), and optionally ``quick_gelu`` (set it for checkpoints trained with QuickGELU: loading them
    without it gives silently wrong features), ``image_mean`` / ``image_std`` / ``image_interpolation`` /
    ``image_resize_mode`` (preprocessing of a checkpoint whose statistics open_clip cannot know) and
    ``cache_dir`` (open_clip's download cache), ``trusted`` (default false: see below). ``name: hf-hub:org/repo`` (downloaded) and
    ``name: local-dir:/folder`` (an open_clip_config.json and weights, offline) bring their own config and
    weights: no ``pretrained``, and ``key`` is required. open_clip must confirm that weights were loaded
    (``create_model_from_pretrained``), so a model never runs with random weights. Half precision runs as
    CUDA autocast over fp32 weights; on a CPU the model runs in fp32 and a warning says so. A wrong entry
    raises ``ConfigError`` naming ``evaluation.models.<key>.<field>``. A checkpoint that
    ``torch.load(weights_only=True)`` refuses (a training checkpoint holding an ``argparse.Namespace`` or
    numpy scalars) raises ``ConfigError`` naming ``pretrained`` and the option ``trusted: true``, which loads
    the file with ``weights_only=False`` (it can run code from the file) and warns that it does.

    Note on the release's keys: the authors name models by *pretraining set*, not tag
    (``backboneViT-B-16_pretrainedlaion400m`` for the tag ``laion400m_e32``), so give ``key`` (the
    ``models`` mapping key) to land in the same rows. Their CC-3M/CC-12M/YFCC-15M/SynthCI ViT-B-16 models
    are SLIP checkpoints with a SLIP model class and ImageNet normalisation; they load here only once
    converted to an open_clip state dict (with ``image_mean``/``image_std`` set accordingly).

Datasets (``load_dataset``)
    ``imagefolder``  ``root``: one sub-folder per class (sorted folder order = label order); class names are
                     the folder names with underscores read as spaces, unless ``class_names`` (a list in
                     sorted folder order, or a ``{folder: name}`` mapping) or ``class_names_file`` (one
                     name per line, sorted folder order) is given. 1000 WordNet-id folders (ImageNet's
                     ``n01440764`` ...) get ImageNet's curated names; fewer need a list.
    ``wds``          ``paths``: tar shards (brace patterns, globs, folders, lists, as in ``helpers.text.captions``),
                     ``image_ext`` (default ``[jpg, jpeg, png, webp]``: the first one a sample has).
                     Zero-shot (``task: zero_shot``, the default): ``label_key`` (default ``cls``: the file
                     extension holding an integer label or a class name) and ``class_names`` or
                     ``class_names_file``. Retrieval (``task: retrieval``): ``caption_ext`` (default ``txt``),
                     one caption per non-empty line, ``max_captions`` (keep the first n per image; the
                     authors used 5 for COCO) and optionally ``concepts`` / ``concepts_file``, the
                     concepts whose per-concept recall is reported. One metadata pass reads labels and
                     captions up front (image bytes are skipped, not decoded); samples without an image
                     or without a label/caption are left out with a warning.
    ``torchvision``  ``name`` (a ``torchvision.datasets`` class, e.g. ``CIFAR10``), ``root``, ``split``
                     (``test`` by default; classes with a ``train`` flag get ``train = split == "train"``),
                     always ``download=False`` (a missing dataset is a ``ConfigError`` naming ``root``).
                     Class names come from the dataset's ``classes`` unless given; tuples of synonyms
                     become readable names (ImageNet: open_clip's curated list, made distinct as the
                     study's release names it; others: the first synonym; :mod:`.classnames`).
    Every format: class names must be distinct (repeats are refused at load time, listed).
    ``parquet``      ``paths``: Parquet files (a file, glob or folder, or a list; sorted), one row per image:
                     ``image_column`` (default ``image``: the image's encoded bytes, or a struct with a
                     ``bytes`` field as Hugging Face ``datasets`` writes an ``Image`` feature) and
                     ``label_column`` (default ``label``: an integer index or a class name); class names from
                     ``class_names`` / ``class_names_file`` (index order). Zero-shot only. Example, the Let It
                     Wag! benchmark exported as Parquet with ``image`` {bytes, path} and ``label`` columns:
                     ``{format: parquet, paths: data/raw/let-it-wag/, class_names_file:
                     let_it_wag_datasets/let_it_wag_class_list.txt}``. Labels are read up front; images are
                     streamed a row group at a time. Rows without an image or label are left out with a warning.
    Any format takes ``templates``: the ensemble templates of this dataset (see below). A wrong entry
    raises ``ConfigError`` naming ``evaluation.datasets.<name>.<field>``. Dataset names become release file
    names ``{dataset}_{prompt}_results.json``, which ``helpers.release.tidy`` splits on the first underscore, so
    ``to_release_json`` refuses names containing ``_`` (use ``-``: ``imagenet-sketch``).

Prompt sets
    ``class`` = ``"{c}"``, ``simple`` = ``"A photo of a {c}."``, ``ensemble`` = a template list per dataset.
    Default ensemble: the 80 ImageNet templates of OpenAI's CLIP, as open_clip ships them
    (``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``; :func:`openai_imagenet_templates`),
    for every dataset. The authors used per-dataset lists: those of OpenAI's CLIP repository
    (``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` and ``data/prompts.md``, one list per
    dataset) as collected in the authors' ``src/zero_shot_templates.py``. To reproduce them exactly,
    paste a dataset's list into its ``templates:`` entry in ``params.yaml``; ``{c}`` and ``{}`` are both
    accepted as the placeholder, so CLIP's strings can be pasted as they are. The classifier of a class is
    the mean of its L2-normalised prompt embeddings, normalised again (Radford et al. 2021).

Embedding cache (``cache_dir``)
    ``{cache_dir}/{model_key}/images/{dataset}.npy`` (float32, L2-normalised, dataset order) and
    ``{cache_dir}/{model_key}/text/{dataset}.{prompt_set}.npy`` (``captions`` for retrieval), each with a
    JSON sidecar ``.json`` holding the model key and fingerprint (weights digest, open_clip version,
    precision, preprocessing), the dataset's image fingerprint (file names and sizes, sample keys; not
    labels or class names, which do not change an image embedding), the prompts' digest, ``n`` and
    ``dim``. An array is reused only when its sidecar matches exactly, so evaluating class, simple and
    ensemble prompts computes the images once; anything else recomputes and overwrites (``refresh=True``
    forces it). Written with ``np.save`` (no pickle) to a temporary name and
    renamed. The dataset fingerprint uses file names and sizes, not contents (hashing ImageNet on every
    run would cost more than the embeddings): replacing an image by one of the same size needs ``refresh``.

Metrics (tidy columns ``model, dataset, task, prompt, concept, metric, value, n``)
    Zero-shot: ``metric = "top1"``, ``value`` in percent, per class (``concept`` = class name, ``n`` = its
    images) and overall (``concept = OVERALL``: accuracy over all images, not the mean over classes -- the
    release's ``full``). Ties between classes go to the first class (``argmax``).
    Retrieval: ``metric = "i2t_k=1"`` etc., ``value`` a fraction, ``prompt = "-"``. A query succeeds at k when
    a correct item is among the k best; an image's correct items are all its captions (any of them counts),
    a caption's is its image. Ties are counted *against* the model: the rank of a query is the number of
    wrong items scoring at least as high as its best correct one, so a model that scores everything alike
    gets no credit (the authors' argsort breaks ties arbitrarily; with real embeddings ties are rare).
    Per concept (``textsearch.match_captions`` with the given concepts, ``phrase`` mode by default), as
    the authors defined it: the t2i queries are the captions mentioning the concept, the i2t queries the images any of
    whose captions mentions it; ``n`` = number of queries, concepts with no query are left out.
"""
