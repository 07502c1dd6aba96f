module github.com/gpuaas/provision/clientcert

go 1.22
