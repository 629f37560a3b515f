//! The wasmtime side of plugins: one `Engine` for the process (pooling
//! allocator, epoch interruption driven by a 10 ms ticker thread), module
//! validation against ABI v1 (see `plugins/ABI.md`), and calls into pooled
//! instances under a memory cap, a deadline, a bounded stack and an output
//! cap. An instance that failed in any way is discarded, never reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{
    Caller, Config, Engine, Extern, ExternType, InstanceAllocationStrategy, InstancePre, Linker,
    Memory, Module, PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc, ValType,
};

use sluice_metadata::plugins::PluginKind;

/// Epoch ticks are this long; deadlines are rounded up to whole ticks.
const TICK: Duration = Duration::from_millis(10);
/// Wasm stack per call: deep enough for real code, small enough that
/// runaway recursion traps quickly.
const MAX_WASM_STACK: usize = 512 * 1024;
/// Idle instances kept per plugin version.
const POOL_SIZE: usize = 16;

/// Limits of one call, from the binding's topic configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sandbox {
    pub memory_bytes: usize,
    pub deadline: Duration,
    pub max_output_bytes: usize,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            memory_bytes: 32 << 20,
            deadline: Duration::from_millis(100),
            max_output_bytes: 32 << 20,
        }
    }
}

/// The batch one call hands to the guest: its encoded size, and how to
/// encode it straight into the buffer the guest's `sluice_alloc` returned
/// (no staging copy on the host).
pub trait Input {
    fn encoded_len(&self) -> usize;
    /// Writes exactly `dst.len()` bytes; false if the encoding did not fill
    /// `dst` exactly (a bug, reported as a failed call, never a panic).
    fn write_to(&self, dst: &mut [u8]) -> bool;
}

impl Input for [u8] {
    fn encoded_len(&self) -> usize {
        self.len()
    }
    fn write_to(&self, dst: &mut [u8]) -> bool {
        if dst.len() != self.len() {
            return false;
        }
        dst.copy_from_slice(self);
        true
    }
}

/// Why a call failed, by the kinds the metrics and failure policies use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("exceeded its {0:?} execution deadline")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {0} bytes")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned error code {0}")]
    GuestError(i64),
    #[error("returned {0} bytes of output, over the {1}-byte limit")]
    OutputTooLarge(usize, usize),
    #[error("returned malformed output: {0}")]
    BadOutput(String),
}

impl CallError {
    /// Label for `sluice_plugin_errors_total{kind=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory(_) => "oom",
            CallError::Trap(_) => "trap",
            CallError::GuestError(_) => "guest_error",
            CallError::OutputTooLarge(..) => "output_too_large",
            CallError::BadOutput(_) => "bad_output",
        }
    }
}

/// Per-store state: the limiter remembers whether it refused a growth, so
/// the resulting trap is reported as out-of-memory rather than a bug.
pub struct HostState {
    max_memory: usize,
    denied_growth: bool,
    plugin: Arc<str>,
    /// The calling binding's `sluice.plugin.config.<plugin>`, set per call.
    config: Arc<str>,
    /// Log lines written during the current call (capped per call, so a
    /// plugin logging per record cannot flood the broker's log).
    logged: u32,
}

/// Log lines one call may write; the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 8;

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.denied_growth = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct PluginEngine {
    engine: Engine,
    linker: Linker<HostState>,
}

impl PluginEngine {
    pub fn new() -> anyhow::Result<Arc<PluginEngine>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.max_wasm_stack(MAX_WASM_STACK);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(256);
        pool.total_memories(256);
        pool.total_tables(256);
        pool.max_memory_size(256 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&config).map_err(|e| anyhow::anyhow!("starting the wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap("sluice", "log", host_log)
            .and_then(|l| l.func_wrap("sluice", "config", host_config))
            .map_err(|e| anyhow::anyhow!("defining host imports: {e}"))?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| anyhow::anyhow!("starting the epoch ticker: {e}"))?;
        Ok(Arc::new(PluginEngine { engine, linker }))
    }

    /// Compiles and checks a module against ABI v1 for `kind`, then runs
    /// `sluice_abi_version` once in a sandbox.
    pub fn compile(
        &self,
        name: &str,
        kind: PluginKind,
        wasm: &[u8],
    ) -> Result<CompiledPlugin, String> {
        let module = Module::new(&self.engine, wasm)
            .map_err(|e| format!("not a valid WebAssembly module: {e}"))?;
        self.prepare(name, kind, module)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The checks of `compile` on an already compiled module (from the
    /// on-disk artifact cache): ABI exports and imports, linking, one
    /// sandboxed `sluice_abi_version` call.
    pub fn prepare(
        &self,
        name: &str,
        kind: PluginKind,
        module: Module,
    ) -> Result<CompiledPlugin, String> {
        for import in module.imports() {
            let i32_params = |f: &wasmtime::FuncType, n: usize| {
                f.params().len() == n && f.params().all(|p| matches!(p, ValType::I32))
            };
            let ok = import.module() == "sluice"
                && match (import.name(), import.ty()) {
                    ("log", ExternType::Func(f)) => i32_params(&f, 3) && f.results().len() == 0,
                    ("config", ExternType::Func(f)) => {
                        i32_params(&f, 2)
                            && f.results().len() == 1
                            && f.results().all(|r| matches!(r, ValType::I32))
                    }
                    _ => false,
                };
            if !ok {
                return Err(format!(
                    "imports {}::{} ({:?}); plugins may only import sluice::log (i32, i32, i32) \
                     and sluice::config (i32, i32) -> i32",
                    import.module(),
                    import.name(),
                    import.ty()
                ));
            }
        }
        let func_sig = |export: &str| -> Result<(Vec<ValType>, Vec<ValType>), String> {
            match module.get_export(export) {
                Some(ExternType::Func(f)) => Ok((f.params().collect(), f.results().collect())),
                Some(other) => Err(format!("export '{export}' is {other:?}, not a function")),
                None => Err(format!(
                    "missing export '{export}' (required by the {kind} ABI)"
                )),
            }
        };
        let i32s = |n: usize| std::iter::repeat_n("i32", n).collect::<Vec<_>>().join(", ");
        let check = |export: &str, params: usize, result: &str| -> Result<(), String> {
            let (p, r) = func_sig(export)?;
            let params_ok = p.len() == params && p.iter().all(|t| matches!(t, ValType::I32));
            let result_ok = r.len() == 1
                && match result {
                    "i64" => matches!(r[0], ValType::I64),
                    _ => matches!(r[0], ValType::I32),
                };
            if params_ok && result_ok {
                Ok(())
            } else {
                Err(format!(
                    "export '{export}' has type ({p:?}) -> ({r:?}); ABI v1 needs ({}) -> {result}",
                    i32s(params)
                ))
            }
        };
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err("missing exported memory 'memory'".into());
        }
        check("sluice_abi_version", 0, "i32")?;
        check("sluice_alloc", 1, "i32")?;
        match kind {
            PluginKind::Partitioner => check("sluice_partition", 3, "i64")?,
            PluginKind::Interceptor => check("sluice_intercept", 2, "i64")?,
            PluginKind::Filter => check("sluice_filter", 2, "i64")?,
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot link: {e}"))?;
        let plugin = CompiledPlugin {
            engine: self.engine.clone(),
            name: Arc::from(name),
            kind,
            pre,
            pool: Mutex::new(HashMap::new()),
        };
        let mut slot = plugin
            .instantiate(&Sandbox::default())
            .map_err(|e| format!("cannot instantiate: {e}"))?;
        slot.store
            .set_epoch_deadline(ticks(Sandbox::default().deadline));
        let version = slot
            .abi_version
            .call(&mut slot.store, ())
            .map_err(|e| format!("sluice_abi_version failed: {e}"))?;
        if version != sluice_plugin::ABI_VERSION {
            return Err(format!(
                "plugin speaks ABI version {version}; this broker speaks {}",
                sluice_plugin::ABI_VERSION
            ));
        }
        Ok(plugin)
    }
}

fn host_log(mut caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32) {
    let state = caller.data_mut();
    state.logged += 1;
    if state.logged > MAX_LOG_LINES_PER_CALL {
        return;
    }
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return;
    };
    let len = (len.max(0) as usize).min(4096);
    let mut buf = vec![0u8; len];
    if mem.read(&caller, ptr.max(0) as usize, &mut buf).is_err() {
        return;
    }
    let msg = String::from_utf8_lossy(&buf);
    let plugin = caller.data().plugin.clone();
    match level {
        0 => tracing::error!(plugin = %plugin, "{msg}"),
        1 => tracing::warn!(plugin = %plugin, "{msg}"),
        2 => tracing::info!(plugin = %plugin, "{msg}"),
        _ => tracing::debug!(plugin = %plugin, "{msg}"),
    }
}

/// `config(ptr, cap) -> len`: copies up to `cap` bytes of the binding's
/// configuration to `ptr` and returns its full length, so a guest with too
/// small a buffer can grow it and ask again. -1 if the buffer is not in the
/// guest's memory.
fn host_config(mut caller: Caller<'_, HostState>, ptr: i32, cap: i32) -> i32 {
    let config = caller.data().config.clone();
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return -1;
    };
    let n = config.len().min(cap.max(0) as usize);
    if mem
        .write(&mut caller, ptr as u32 as usize, &config.as_bytes()[..n])
        .is_err()
    {
        return -1;
    }
    // Configs are validated to at most 32 KiB, far below i32::MAX.
    config.len() as i32
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() as u64)
        .div_ceil(TICK.as_millis() as u64)
        .max(1)
        + 1
}

enum KindFunc {
    Partition(TypedFunc<(i32, i32, i32), i64>),
    Unary(TypedFunc<(i32, i32), i64>),
}

/// One instance with its store, ready for calls.
struct Slot {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    abi_version: TypedFunc<(), i32>,
    func: KindFunc,
    memory_cap: usize,
}

/// A compiled, validated plugin version with its pools of instances, one
/// pool per binding (topic), so no instance's guest state is ever shared
/// between topics, and one instance per concurrent caller.
pub struct CompiledPlugin {
    engine: Engine,
    name: Arc<str>,
    pub kind: PluginKind,
    pre: InstancePre<HostState>,
    pool: Mutex<HashMap<String, Vec<Slot>>>,
}

impl CompiledPlugin {
    fn instantiate(&self, sandbox: &Sandbox) -> wasmtime::Result<Slot> {
        let mut store = Store::new(
            &self.engine,
            HostState {
                max_memory: sandbox.memory_bytes,
                denied_growth: false,
                plugin: self.name.clone(),
                config: Arc::from(""),
                logged: 0,
            },
        );
        store.limiter(|s| s as &mut dyn ResourceLimiter);
        // Instantiation runs the start function: give it a deadline too.
        store.set_epoch_deadline(ticks(sandbox.deadline));
        let instance = self.pre.instantiate(&mut store)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut store, "sluice_alloc")?;
        let abi_version = instance.get_typed_func::<(), i32>(&mut store, "sluice_abi_version")?;
        let func = match self.kind {
            PluginKind::Partitioner => {
                KindFunc::Partition(instance.get_typed_func(&mut store, "sluice_partition")?)
            }
            PluginKind::Interceptor => {
                KindFunc::Unary(instance.get_typed_func(&mut store, "sluice_intercept")?)
            }
            PluginKind::Filter => {
                KindFunc::Unary(instance.get_typed_func(&mut store, "sluice_filter")?)
            }
        };
        Ok(Slot {
            store,
            memory,
            alloc,
            abi_version,
            func,
            memory_cap: sandbox.memory_bytes,
        })
    }

    /// Runs the kind function on one encoded batch; returns its output bytes.
    pub fn call(
        &self,
        binding: &str,
        input: &(impl Input + ?Sized),
        partitions: u32,
        sandbox: &Sandbox,
        config: Arc<str>,
    ) -> Result<(Vec<u8>, Duration), CallError> {
        let started = Instant::now();
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            // A pooled instance made under another memory cap is not reused.
            pool.get_mut(binding)
                .and_then(Vec::pop)
                .filter(|s| s.memory_cap == sandbox.memory_bytes)
        };
        let mut slot = match pooled {
            Some(s) => s,
            None => self
                .instantiate(sandbox)
                .map_err(|e| classify(e, None, sandbox))?,
        };
        slot.store.data_mut().config = config;
        let result = run(&mut slot, input, partitions, sandbox);
        match result {
            Ok(out) => {
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                let idle = pool.entry(binding.to_string()).or_default();
                if idle.len() < POOL_SIZE {
                    idle.push(slot);
                }
                Ok((out, started.elapsed()))
            }
            Err(e) => Err(e),
        }
    }

    pub fn module(&self) -> &Module {
        self.pre.module()
    }

    /// Bytes of linear memory held by idle pooled instances.
    pub fn pooled_memory_bytes(&self) -> usize {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.values()
            .flatten()
            .map(|s| s.memory.data_size(&s.store))
            .sum()
    }
}

fn run(
    slot: &mut Slot,
    input: &(impl Input + ?Sized),
    partitions: u32,
    sandbox: &Sandbox,
) -> Result<Vec<u8>, CallError> {
    slot.store.data_mut().denied_growth = false;
    slot.store.data_mut().logged = 0;
    slot.store.set_epoch_deadline(ticks(sandbox.deadline));
    let size = input.encoded_len();
    let len = i32::try_from(size).map_err(|_| CallError::BadOutput("input too large".into()))?;
    let ptr = slot
        .alloc
        .call(&mut slot.store, len)
        .map_err(|e| classify(e, Some(&slot.store), sandbox))?;
    let start = ptr as u32 as usize;
    let dst = slot
        .memory
        .data_mut(&mut slot.store)
        .get_mut(start..start.saturating_add(size))
        .ok_or_else(|| {
            CallError::BadOutput(format!(
                "sluice_alloc returned {start}, but {size} bytes from there are outside its memory"
            ))
        })?;
    if !input.write_to(dst) {
        return Err(CallError::BadOutput(
            "host encoded a batch of the wrong size".into(),
        ));
    }
    let packed = match &slot.func {
        KindFunc::Partition(f) => f.call(&mut slot.store, (ptr, len, partitions as i32)),
        KindFunc::Unary(f) => f.call(&mut slot.store, (ptr, len)),
    }
    .map_err(|e| classify(e, Some(&slot.store), sandbox))?;
    if packed < 0 {
        return Err(CallError::GuestError(packed));
    }
    let out_ptr = (packed >> 32) as u32 as usize;
    let out_len = (packed & 0xffff_ffff) as usize;
    if out_len > sandbox.max_output_bytes {
        return Err(CallError::OutputTooLarge(out_len, sandbox.max_output_bytes));
    }
    // One copy out of guest memory, no zero-filled buffer first.
    let out = slot
        .memory
        .data(&slot.store)
        .get(out_ptr..out_ptr.saturating_add(out_len))
        .ok_or_else(|| {
            CallError::BadOutput(format!(
                "output at {out_ptr}+{out_len} is outside the module's memory"
            ))
        })?
        .to_vec();
    Ok(out)
}

fn classify(e: wasmtime::Error, store: Option<&Store<HostState>>, sandbox: &Sandbox) -> CallError {
    if store.is_some_and(|s| s.data().denied_growth) {
        return CallError::OutOfMemory(sandbox.memory_bytes);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(sandbox.deadline),
        Some(t) => CallError::Trap(t.to_string()),
        None => CallError::Trap(format!("{e}")),
    }
}
