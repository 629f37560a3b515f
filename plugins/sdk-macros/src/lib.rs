//! `#[partitioner]`, `#[interceptor]` and `#[filter]`: each keeps the
//! annotated function as written and adds the WebAssembly exports of the
//! Sluice plugin ABI (see `plugins/ABI.md`) that call it once per record of
//! a batch. Written without syn/quote: the only thing read from the input is
//! the function's name.

use proc_macro::{TokenStream, TokenTree};

fn function_name(item: &TokenStream) -> Result<String, String> {
    let mut tokens = item.clone().into_iter();
    while let Some(t) = tokens.next() {
        if let TokenTree::Ident(i) = &t
            && i.to_string() == "fn"
        {
            return match tokens.next() {
                Some(TokenTree::Ident(name)) => Ok(name.to_string()),
                _ => Err("expected a function name after `fn`".into()),
            };
        }
    }
    Err("this attribute goes on a function".into())
}

fn expand(item: TokenStream, export: &str) -> TokenStream {
    let name = match function_name(&item) {
        Ok(n) => n,
        Err(e) => {
            return format!("compile_error!({e:?});")
                .parse()
                .unwrap_or_default();
        }
    };
    let common = r#"
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_abi_version() -> i32 { ::sluice_plugin::ABI_VERSION }
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_alloc(len: u32) -> u32 { ::sluice_plugin::__rt::alloc(len) }
    "#;
    let generated = export.replace("NAME", &name);
    let mut out = item;
    let extra: TokenStream = format!("{common}{generated}").parse().unwrap_or_default();
    out.extend(extra);
    out
}

/// `fn(&Record, partitions: u32) -> u32`: the partition for each record.
#[proc_macro_attribute]
pub fn partitioner(_attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(
        item,
        r#"#[unsafe(no_mangle)]
        pub extern "C" fn sluice_partition(_ptr: u32, _len: u32, partitions: u32) -> i64 {
            ::sluice_plugin::__rt::partition(partitions, NAME)
        }"#,
    )
}

/// `fn(Record) -> Result<Record, String>`: the (possibly rewritten) record,
/// or the reason to reject it.
#[proc_macro_attribute]
pub fn interceptor(_attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(
        item,
        r#"#[unsafe(no_mangle)]
        pub extern "C" fn sluice_intercept(_ptr: u32, _len: u32) -> i64 {
            ::sluice_plugin::__rt::intercept(NAME)
        }"#,
    )
}

/// `fn(&Record) -> bool`: keep the record?
#[proc_macro_attribute]
pub fn filter(_attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(
        item,
        r#"#[unsafe(no_mangle)]
        pub extern "C" fn sluice_filter(_ptr: u32, _len: u32) -> i64 {
            ::sluice_plugin::__rt::filter(NAME)
        }"#,
    )
}
