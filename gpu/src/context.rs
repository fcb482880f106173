//! Adapter selection and the device: built once, or not at all (then the CPU path runs).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which adapter to use, usually from the `SB_GPU` environment variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// `SB_GPU` unset, empty or `auto`: the best hardware adapter (discrete, then integrated,
    /// then virtual); software rasterizers such as llvmpipe are slower than the CPU path and are
    /// not chosen.
    Auto,
    /// `SB_GPU=cpu`: no GPU, the CPU path.
    Cpu,
    /// `SB_GPU=gpu`: the best adapter of any kind, software ones included (last).
    AnyGpu,
    /// Any other value: the first adapter whose name contains it (case-insensitive), software
    /// ones included, e.g. `SB_GPU=llvmpipe` or `SB_GPU=H200`.
    Named(String),
}

impl AdapterChoice {
    /// The environment variable read by [`AdapterChoice::from_env`].
    pub const ENV: &'static str = "SB_GPU";

    /// Parses a value of `SB_GPU` (see the variants).
    pub fn parse(s: &str) -> Self {
        match s.trim() {
            "" => AdapterChoice::Auto,
            v if v.eq_ignore_ascii_case("auto") => AdapterChoice::Auto,
            v if v.eq_ignore_ascii_case("cpu") => AdapterChoice::Cpu,
            v if v.eq_ignore_ascii_case("gpu") => AdapterChoice::AnyGpu,
            v => AdapterChoice::Named(v.to_string()),
        }
    }

    /// `SB_GPU`'s choice ([`AdapterChoice::Auto`] when unset).
    pub fn from_env() -> Self {
        Self::parse(&std::env::var(Self::ENV).unwrap_or_default())
    }
}

/// Why no GPU backend was built; the caller runs the CPU path (and should log this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no GPU backend: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// What the chosen adapter says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterDesc {
    /// The adapter's name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// The graphics API (`Vulkan`, `Metal`, `Dx12`).
    pub backend: String,
    /// Driver name and version.
    pub driver: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
}

/// The device and queue, the adapter's description and its limits.
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub desc: AdapterDesc,
    pub limits: wgpu::Limits,
    /// Set when the device is lost; every later call fails.
    pub lost: Arc<AtomicBool>,
    /// Set when a wait for the device ran past [`crate::GpuOptions::wait_timeout`]; every later
    /// call fails (work may still be in flight, or the device stuck).
    pub timed_out: AtomicBool,
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Context {
    /// Selects an adapter by `choice` and opens a device with everything the adapter allows.
    pub fn new(choice: &AdapterChoice) -> Result<Context, Unavailable> {
        if *choice == AdapterChoice::Cpu {
            return Err(Unavailable(format!(
                "{}=cpu selects the CPU path",
                AdapterChoice::ENV
            )));
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
        }
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let names = || {
            infos
                .iter()
                .map(|i| format!("{} ({:?}, {:?})", i.name, i.device_type, i.backend))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if adapters.is_empty() {
            return Err(Unavailable(
                "no adapter found (no Vulkan, Metal or DX12 driver; on Linux, \
                 `apt-get install mesa-vulkan-drivers` provides the llvmpipe software one)"
                    .into(),
            ));
        }
        let mut order: Vec<usize> = (0..adapters.len()).collect();
        order.sort_by_key(|&i| rank(infos[i].device_type));
        let pick = match choice {
            AdapterChoice::Auto => order
                .into_iter()
                .find(|&i| infos[i].device_type != wgpu::DeviceType::Cpu)
                .ok_or_else(|| {
                    Unavailable(format!(
                        "only software adapters found ({}), which are slower than the CPU path; \
                         {}=gpu or {}=<name> selects one anyway",
                        names(),
                        AdapterChoice::ENV,
                        AdapterChoice::ENV
                    ))
                })?,
            AdapterChoice::AnyGpu => order[0],
            AdapterChoice::Named(sub) => {
                let sub = sub.to_lowercase();
                order
                    .into_iter()
                    .find(|&i| infos[i].name.to_lowercase().contains(&sub))
                    .ok_or_else(|| {
                        Unavailable(format!(
                            "no adapter's name contains {sub:?}; found {}",
                            names()
                        ))
                    })?
            }
            AdapterChoice::Cpu => unreachable!("handled above"),
        };
        let adapter = &adapters[pick];
        let info = &infos[pick];
        let limits = adapter.limits();
        // timestamps only serve GpuBackend::profile_device_step
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shadowbucket"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Unavailable(format!("adapter {} refused a device: {e}", info.name)))?;
        // wgpu's default for errors nobody captured is a panic; log them instead (the calls that
        // can fail run inside error scopes and return them).
        device.on_uncaptured_error(Arc::new(|e: wgpu::Error| {
            log::error!("shadowbucket-gpu: uncaptured device error: {e}");
        }));
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            log::error!("shadowbucket-gpu: device lost ({reason:?}): {msg}");
            flag.store(true, Ordering::SeqCst);
        });
        let desc = AdapterDesc {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            device_type: format!("{:?}", info.device_type),
        };
        let limits = device.limits();
        Ok(Context {
            device,
            queue,
            desc,
            limits,
            lost,
            timed_out: AtomicBool::new(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!(AdapterChoice::parse(""), AdapterChoice::Auto);
        assert_eq!(AdapterChoice::parse(" Auto "), AdapterChoice::Auto);
        assert_eq!(AdapterChoice::parse("CPU"), AdapterChoice::Cpu);
        assert_eq!(AdapterChoice::parse("gpu"), AdapterChoice::AnyGpu);
        assert_eq!(
            AdapterChoice::parse("llvmpipe"),
            AdapterChoice::Named("llvmpipe".into())
        );
    }

    #[test]
    fn cpu_choice_is_an_ordinary_no() {
        let e = Context::new(&AdapterChoice::Cpu).err().unwrap();
        assert!(e.to_string().contains("CPU path"), "{e}");
    }
}
