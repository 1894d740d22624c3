"""Named defaults of lwgpu, in one place; ``configs/`` mirrors them (tests/test_settings.py checks that).

Each constant is read by the code path it names; no tuning number lives inside a function body.
Change a default here (and in the matching config file), never at the call site.
"""
from __future__ import annotations

# ---------------------------------------------------------------------- specs
#: Gaussian kernel bandwidth of the reference package (and of a new market).
GAMMA = 0.1
#: RKME points per spec (the reference's default).
K = 100
#: Rounds of (z step, beta QP) when a fit is given ``steps=None``: the reference's count, each step better.
FIT_STEPS = 3
#: Rows per dataset used for the fit's z-steps (all rows when n is smaller); the final beta uses all rows.
FIT_MAX_POINTS = 2048
#: Lloyd iterations after the k-means++ seeding, and blocks of D^2 sampling in the seeding.
FIT_KMEANS_ITERS = 2
FIT_KMEANS_ROUNDS = 10
#: QP iterations per fit round (warm-started) and for the final beta (with the active-set polish).
FIT_QP_ITERS = 50
FIT_FINAL_QP_ITERS = 3000
#: Bytes of kernel blocks per padded batch (torch fit engine); rows per tile of the full-data pass.
FIT_BATCH_MEMORY = 2**28
FIT_CHUNK_ROWS = 65536
#: Bounds of the fit's backtracking z-step size.
FIT_MIN_ETA = 1.0 / 1024
FIT_MAX_ETA = 2.0
#: CPU fit batches with fewer kernel-block entries x (d + 8) than this run on one torch thread.
FIT_SMALL_WORK = 1 << 27
#: Fit engine: "auto" (numba on a CPU, torch elsewhere), "numba" or "torch".
FIT_ENGINE = "auto"

# ---------------------------------------------------------------------- kernels / exact search
#: Kernel backend preference: "auto" (numba on a CPU, CUDA C on a GPU for float32; torch otherwise).
BACKEND = "auto"
#: Bank specs per backend ``cross`` call when a bank is scanned, by backend.
TILE_TORCH = 16384
TILE_NUMBA = 16384
TILE_CUDA = 1 << 17
#: torch backend: bounds of the largest (query points x bank points) kernel block made at once (the
#: default cap is 1/16 of the tile's own bytes, clamped to these), and bank specs a block holds at least.
TORCH_BLOCK_MIN = 1 << 16
TORCH_BLOCK_MAX = 1 << 22
TORCH_SPECS_PER_BLOCK = 16
#: Elements (K x max(K, d)) of one float64 block of the generic self terms.
SELF_TERMS_BLOCK = 1 << 22
#: numba backend: bank points per parallel work item, and the float32 budget of its transposed
#: (d, points) buffer (kept in L1/L2): specs per item = min(POINTS // K, FLOATS // (d4 K)).
NUMBA_CHUNK_POINTS = 384
NUMBA_CHUNK_FLOATS = 32768
#: Query specs per block of :func:`lwgpu.kernels.mmd2_pairwise`.
PAIRWISE_TILE = 2048
#: Exact search: results per query, and bank specs scanned between two top-k merges.
EXACT_K = 10
EXACT_CHUNK = 65536
#: Exact search: per chunk, the device pre-selects ``TOPK_MARGIN_FACTOR * k + TOPK_MARGIN_EXTRA``
#: candidates (room for ties) when the chunk holds more than ``TOPK_PRESELECT_RATIO * k`` specs.
TOPK_MARGIN_FACTOR = 2
TOPK_MARGIN_EXTRA = 8
TOPK_PRESELECT_RATIO = 4
#: Pivot pruning: pivots per table, and the relative rounding of a float32 distance the bounds allow for.
PIVOTS_M = 16
PIVOTS_REL_TOL = 1e-5
#: Pivot pruning: first batch of specs visited per query (at least 4 k; doubling up to EXACT_CHUNK), and
#: the fraction of the bank whose bound must fall below the first k-th best for a plain scan to be used.
PRUNE_FIRST_STEP = 256
PRUNE_FALLBACK = 0.5

# ---------------------------------------------------------------------- mixture QPs (lwgpu.search.mixture)
# (mixture size, method, decay rate and weight cutoff: MIXTURE_* in the search planner section below)
#: Members whose optimal weight is at most this are dropped (they do not change the mixture).
MIXTURE_MIN_WEIGHT = 1e-6
#: Mixture QP: FISTA iterations and convergence-check interval (the active-set polish makes small QPs exact).
MIXTURE_QP_ITERS = 300
MIXTURE_QP_CHECK_EVERY = 25

# ---------------------------------------------------------------------- index
# Measured on lwgpu.data.clustered markets (K=32, d=16), 2-core CPU: benchmarks/results/index.md.
#: Random-feature map of a spec for FAISS: "orf" (orthogonal random Fourier features), "rff", "nystroem".
INDEX_EMBEDDER = "orf"
#: Embedding dimension. Where a query's nearest specs lie far out among many near-ties (the 100,000-spec
#: prefix of the 1M clustered market: d_100 / d_10 = 1.05), ORF noise decides the order: with exact
#: embeddings and 1,000 re-ranked candidates recall@10 was 0.95 at D=512 and 1.00 at D=1024 (scratch study of
#: 2026-12-01, 40 users; the numbers are in benchmarks/notes/market_scale.md).
INDEX_D = 1024
#: FAISS candidates re-ranked by the exact distance per query (filtered or not); also the pool a
#: market search scores over when the index answers.
#: 1,000 cost ~2 ms of exact MMD (K=32, d=16) and lifted recall@10 on that prefix from 0.88 to 0.9975.
INDEX_CANDIDATES = 1000
#: HNSW efSearch when none is given (raised to at least the candidates).
INDEX_EF_SEARCH = 256
#: ``factory="auto"``: exhaustive ``Flat`` below this many specs.
INDEX_FLAT_MAX = 16_384
#: ``factory="auto"`` from INDEX_FLAT_MAX specs on: ``IVF{nlist},PQ{D/per}x4fs``, 4-bit PQ codes scanned by
#: FAISS's SIMD fast scan, ``per`` = INDEX_PQ_DIMS_PER_CODE dimensions per code up to INDEX_FINE_CODES_MAX_N
#: specs (512 bytes per spec at D=1024), then INDEX_PQ_DIMS_PER_CODE_LARGE (256 bytes: half the scan).
#: 100k prefix of the 1M market, 1,000 candidates: PQ1024x4fs recall@10 0.9975 (5 ms), PQ512x4fs 0.975.
#: Full 1M market, nprobe 512: PQ512x4fs 0.997 at 34 ms, PQ1024x4fs 1.000 at 64 ms; D=512 PQ256x4fs 0.976.
INDEX_PQ_DIMS_PER_CODE = 1
INDEX_PQ_DIMS_PER_CODE_LARGE = 2
INDEX_FINE_CODES_MAX_N = 262_144
#: ``factory="auto"``: IVF lists = the power of two nearest ``INDEX_LISTS_PER_SQRT_N * sqrt(N)``.
INDEX_LISTS_PER_SQRT_N = 1.0
#: Unfiltered IVF nprobe: ``INDEX_PROBE_BASE`` lists per ``INDEX_PROBE_PER`` specs (at least
#: INDEX_PROBE_BASE, at most every list): 128 at N <= 187,500, every list (1,024) at N = 1,000,000. 64 per
#: 125,000 held recall@10 1.000 on an index built over the whole bank at once, but a market's index grows
#: after training (built at 50,000, grown to 100,000: recall@10 0.98 at 64 probes, 0.995 at 128).
INDEX_PROBE_BASE = 128
INDEX_PROBE_PER = 125_000
#: Filtered search admitting a fraction f of the specs: nprobe (efSearch) / f**INDEX_FILTER_PROBE_POWER,
#: so that the probed lists hold about as many admitted specs as an unfiltered search scans.
INDEX_FILTER_PROBE_POWER = 1.0
#: ... and starts its pool at candidates / f**INDEX_FILTER_CANDIDATE_POWER (then certified, below).
INDEX_FILTER_CANDIDATE_POWER = 0.5
#: Certified re-ranking (lwgpu.index.rerank): the pool of exactly re-ranked candidates grows until its
#: largest embedding distance exceeds the k-th exact distance by INDEX_CERTIFY_Z times the spread of the
#: embedding's error measured on the pool (None or 0: no growth). Exact embedding distances, N=100k: z=2
#: held recall@10 >= 0.99 for filters of 1-100%, z=3 >= 0.998 (pools twice as large); with 4-bit PQ
#: codes (heavier-tailed error) z=2 fell to 0.95 at 10% admitted, z=3 held 0.997.
INDEX_CERTIFY_Z = 3.0
#: Pool growth factor, and how many times the pool FAISS is asked for at once (fewer FAISS calls).
INDEX_CERTIFY_GROWTH = 2
INDEX_PREFETCH = 4
#: The largest pool re-ranked per query (a filtered planner search that cannot certify within it
#: scans the admitted rows exactly, up to PLANNER_FALLBACK_MAX_ROWS).
INDEX_MAX_CANDIDATES = 32_768
#: A filtered IVF search whose probed lists held fewer admitted specs than candidates is repeated
#: over every list.
INDEX_FILTER_FULL_FALLBACK = True
#: Re-train (rebuild) the index once the bank holds this many times the specs it was built over
#: (and the layout for the new size differs).
INDEX_REBUILD_GROWTH = 4.0
#: IVF training sample: this many specs per list, at least INDEX_TRAIN_MIN (all specs if fewer).
INDEX_TRAIN_PER_LIST = 64
INDEX_TRAIN_MIN = 10_000
#: A graph index (HNSW: no deletion) is rebuilt once this fraction of its entries are removed ids.
INDEX_TOMBSTONE_REBUILD = 0.1
#: TorchBackend.mmd2_rows (re-ranking): elements of the largest (queries x Kq x candidates*K) kernel block.
INDEX_RERANK_TILE = 1 << 24
#: Selector of admitted ids: a bitmap (fast to build) while the largest id is below
#: ``INDEX_BITMAP_IDS_PER_SPEC * N + 2**20``, else a hash set (FAISS IDSelectorBatch).
INDEX_BITMAP_IDS_PER_SPEC = 64

# ---------------------------------------------------------------------- search planner / mixture
#: Admitted sets of at most this many specs are scanned exactly in place (``"exact-rows"``); larger
#: ones go through the index with an id selector (``"index-filtered"``) when the bank has one.
PLANNER_EXACT_MAX_ROWS = 32_768
#: Exact scans of more admitted rows than this skip rows by bounding-ball lower bounds first
#: (``"exact-rows-pruned"``, lwgpu.search.bounds: same top-k; at 1M, 20k admitted rows of clustered
#: specs took 7 ms instead of 49); smaller ones evaluate every row.
PLANNER_PRUNE_MIN_ROWS = 4_096
#: Admitted sets below this fraction of the bank are scanned exactly (up to PLANNER_FALLBACK_MAX_ROWS specs)
#: even when larger than PLANNER_EXACT_MAX_ROWS: their k nearest lie far out, among many specs at nearly
#: equal distances that the embedding cannot order (N=1M clustered, 5-10% admitted: index recall@10
#: 0.85-0.93 with certified pools; 10% of 100k: 0.976).
PLANNER_INDEX_MIN_FRACTION = 0.2
#: An index-filtered search whose pool could not be certified falls back to the exact scan of the
#: admitted rows when they are at most this many (else the index's answer stands, logged).
PLANNER_FALLBACK_MAX_ROWS = 131_072
#: statistical_search defaults (the reference's EasyStatSearcher rules): results, mixture bound
#: (the mixture is chosen among the max(k, MIXTURE_MAX**2) nearest), method, greedy stop rule
#: (a member must cut the MMD to DECAY_RATE times), auto's kept mass.
SEARCH_K = 5
MIXTURE_MAX = 5
MIXTURE_METHOD = "greedy"
MIXTURE_DECAY_RATE = 0.95
MIXTURE_WEIGHT_CUTOFF = 0.98

# ---------------------------------------------------------------------- market (configs/market/*.yaml market_options)
#: From this many specs of one input dimension on, the market searches through a SpecIndex.
MARKET_INDEX_THRESHOLD = 50_000
#: From this many image specs of one shape on, the market's image search looks only at the
#: IMAGE_INDEX_CANDIDATES (at least 4k) specs nearest in random-ConvNet feature space
#: (lwgpu.index.image_index), re-ranked by the exact NNGP MMD; below it, an exact scan.
IMAGE_INDEX_THRESHOLD = 2_000
IMAGE_INDEX_CANDIDATES = 64
#: Rows drawn from a submitted RKME to test the model's predict.
MARKET_CHECK_SAMPLES = 10
#: Learnwares per transaction (and per bank append) in add_many / submit_many: a crash loses at most
#: the batch in flight, never a committed one.
MARKET_BATCH = 10_000
#: Flush the banks (O(changed rows)) after this many changes; close() and flush() always do.
MARKET_FLUSH_EVERY = 256

# ---------------------------------------------------------------------- packages (lwgpu.market.archive.PackageLimits)
#: A submitted package (zip or folder) is refused before anything is extracted when its members
#: declare more than PACKAGE_MAX_TOTAL_BYTES in all, one member more than PACKAGE_MAX_FILE_BYTES, or
#: it holds more than PACKAGE_MAX_FILES entries (files and folders); extraction stops at the same caps
#: whatever the headers say.
PACKAGE_MAX_TOTAL_BYTES = 2 * 1024**3
PACKAGE_MAX_FILE_BYTES = 1024**3
PACKAGE_MAX_FILES = 10_000
#: A zip member (or the whole archive) larger than PACKAGE_RATIO_MIN_BYTES whose uncompressed size
#: exceeds PACKAGE_MAX_RATIO times its compressed size is refused as a zip bomb (pickles and JSON
#: specs compress 2-10x; a bomb 1000x and more).
PACKAGE_MAX_RATIO = 200.0
PACKAGE_RATIO_MIN_BYTES = 1024**2
#: The largest learnware.yaml read, and the most YAML nodes it may expand to (aliases counted each time).
PACKAGE_MAX_YAML_BYTES = 1024**2
PACKAGE_MAX_YAML_NODES = 100_000
